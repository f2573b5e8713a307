"""The one control-socket client (agent and qnetd): blocking, standard library only.

Blocking on purpose: `votemesh status` runs once per monitoring poll, and an event loop (asyncio
alone costs ~20 ms to import) is not worth it for one request and one answer.
"""

from __future__ import annotations

# The C module, not `socket`: the wrapper's enum classes cost ~3 ms per CLI call.
from _socket import AF_UNIX, SOCK_STREAM
from _socket import socket as _raw_socket

from proto.control_frame import MAX_REPLY, FrameError, decode_reply, encode_request

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per CLI call
if TYPE_CHECKING:
    from pathlib import Path  # an annotation only: pathlib costs ~6 ms per CLI call

DEFAULT_TIMEOUT = 5.0


def request(path: Path | str, line: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, str]:
    """Send one request line to the unix socket at `path`; (ok, body) of the answer.

    Raises FileNotFoundError / ConnectionRefusedError (nobody listening), PermissionError,
    TimeoutError (no whole answer within `timeout` per step), FrameError (bad request or an
    answer larger than MAX_REPLY)."""
    data = encode_request(line)
    chunks: list[bytes] = []
    size = 0
    sock = _raw_socket(AF_UNIX, SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        while chunk := sock.recv(65536):
            size += len(chunk)
            if size > MAX_REPLY:
                raise FrameError(f"the answer is larger than {MAX_REPLY} bytes")
            chunks.append(chunk)
    finally:
        sock.close()
    return decode_reply(b"".join(chunks))
