"""`make demo` (until the demo cluster exists): a guided tour of the qnetd wire protocol.

Starts Debian's corosync-qnetd on 127.0.0.1 with a throwaway CA, enrolls a client certificate
signed by that CA, and walks a qdevice-style session with votemesh's proto/ package, printing
every message sent and received, decoded, with the raw bytes of each reply.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from proto.qnetd_messages import QnetdMessage
from tests.interop.debian_qnetd import missing_reason, running_qnetd
from tests.interop.wire_walk import Transcript, walk_into

CLUSTER = "demo-cluster"


def show(direction: str, msg: QnetdMessage, raw: bytes) -> None:
    """Print one message: who sent it, its decoded fields, and the bytes of replies."""
    who = "qdevice -> qnetd" if direction == "->" else "qnetd -> qdevice"
    fields = {a: getattr(msg, a) for a, _ in msg.FIELDS if getattr(msg, a) not in (None, ())}
    pretty = ", ".join(
        f"{k}={_fmt(v)}" for k, v in fields.items() if k.startswith("supported") is False
    )
    print(f"  {who}  {type(msg).__name__:<15} {pretty}")
    if direction == "<-":
        print(f"  {'':16}  {'':<15} bytes {_framed_hex(raw)}")


def _framed_hex(raw: bytes, limit: int = 96) -> str:
    """Header | TLV | TLV ... in hex, as the reference writes its vectors."""
    parts, offset = [raw[:6].hex()], 6
    while offset + 4 <= len(raw):
        length = int.from_bytes(raw[offset + 2 : offset + 4], "big")
        parts.append(raw[offset : offset + 4 + length].hex())
        offset += 4 + length
    text = " | ".join(parts)
    return text if len(text) <= limit else text[:limit] + " ..."


def _fmt(value: object) -> str:  # noqa: PLR0911 (one return per value kind)
    if isinstance(value, tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    name = getattr(value, "name", None)
    if isinstance(name, str) and isinstance(value, int):
        return name
    if hasattr(value, "mode"):
        return str(value.mode.name)
    if hasattr(value, "node_id") and hasattr(value, "seq"):
        return str(value)
    if hasattr(value, "node_id"):
        state = getattr(value, "state", None)
        return f"node {value.node_id}" + (f" {state.name}" if state is not None else "")
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def main() -> int:
    reason = missing_reason()
    if reason is not None:
        print(f"votemesh demo: cannot run Debian's corosync-qnetd: {reason}", file=sys.stderr)
        return 2
    with (
        tempfile.TemporaryDirectory(prefix="votemesh-demo-") as tmp,
        running_qnetd(Path(tmp)) as qnetd,
    ):
        print(f"Debian corosync-qnetd running on 127.0.0.1:{qnetd.port}")
        print(f"Enrolled a client certificate CN={CLUSTER} signed by its NSS CA.\n")
        transcript = Transcript(on_entry=show)
        walk_into(transcript, qnetd.port, CLUSTER, qnetd.client_credentials(CLUSTER), node_id=1)
        print(
            f"\nTLS: {transcript.tls_version}, server certificate CN={transcript.server_subject!r}"
        )
        print(f"{len(transcript.received())} replies from the real server, all decoded by proto/.")
        print("The membership list of both configured nodes earned an ACK vote (VOTE_INFO).")
    print("qnetd stopped and its throwaway CA removed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
