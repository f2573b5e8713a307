"""The agent's local control socket (unix stream, mode 0660).

One request per connection: a text line, answered with `OK` or `Error` on the first line and
then the body; the server closes the connection after answering.

| request      | answer body                                                        |
|--------------|--------------------------------------------------------------------|
| `status`     | JSON: the node's status plus datagram counters                     |
| `expected N` | JSON status after overriding expected votes (`expected reset` clears it) |
| `events`     | JSON list of the most recent events, oldest first                  |
| `config`     | JSON: the committed cluster configuration, its version and digest   |
| `delnode X`  | JSON outcome of removing node X (name or id) from the configuration |
| `leave`      | JSON outcome of removing this node (it then stops)                  |
| `join-token S` | JSON `{"join": string}`: a one-time join string valid S seconds |
| `join-stats` | JSON counters of the join port (agent/runtime/join.py)              |
| `qdevice-setup ...` / `qdevice-remove` | JSON outcome (agent/runtime/qdevice_setup.py) |
| `link add N NODE=ADDR...` / `link remove N` | JSON outcome of adding or removing link N |
| `rotate-key` | JSON `{"key_id", "version"}`: a key rotation started (runtime/key_rotation.py) |
| `keys`       | JSON `{"seals", "opens"}`: the key ids this node seals and opens with |
| `join-reload` | JSON: the join port reloaded node.pem / node.key (`votemesh updatecerts`) |

Who may ask what: anyone who can open the socket (root, and the `votemesh` group of the
packaged unit) may read: `status`, `events`, `config`, `keys`, `join-stats`. Every other request
changes quorum or the cluster, or hands out a secret (`join-token`), and is refused unless the
peer (SO_PEERCRED) is root or the agent's own user.

Configuration changes are answered when the cluster answered (`agent/runtime/config_ops.py`);
one that races another on this node is refused with "another configuration change is in
progress; retry".

Adapter ring. Framing: `proto/control_frame.py`; the client: `proto/runtime/control_client.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.config import MAX_EXPECTED_VOTES, ConfigError
from proto.control_frame import MAX_REQUEST, decode_request, encode_reply

EXPECTED_RANGE = f"expected votes must be a whole number from 1 to {MAX_EXPECTED_VOTES} or 'reset'"
REQUEST_TIMEOUT = 5.0
log = structlog.get_logger("votemesh.agent.control")


@dataclass(frozen=True)
class ControlHandlers:
    """What the control socket can ask of the running agent."""

    status: Callable[[], dict[str, Any]]
    set_expected: Callable[[int | None], str | None]
    """Apply `expected N` (None = reset); the refusal's one-line reason, or None."""
    events: Callable[[], list[dict[str, Any]]]
    config: Callable[[str, list[str]], Awaitable[tuple[bool, str]]] | None = None
    """Configuration requests (`config`, `delnode X`, `leave`): (ok, body)."""
    join: Callable[[list[str]], tuple[bool, str]] | None = None
    """`join-token S` / `join-stats` (the join server, None when it does not run)."""
    qdevice: Callable[[list[str]], Awaitable[tuple[bool, str]]] | None = None
    """`qdevice-setup ...` / `qdevice-remove`: a configuration change, answered when done."""


CONFIG_COMMANDS = ("config", "delnode", "leave", "link", "rotate-key", "keys")
QDEVICE_COMMANDS = ("qdevice-setup", "qdevice-remove")

READ_ONLY = frozenset({"status", "events", "config", "keys", "join-stats"})
"""Requests that change nothing and reveal no secret: open to every user of the socket."""


def peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The connecting process's user id (SO_PEERCRED), None when it cannot be read."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return int(struct.unpack("3i", creds)[1])


def not_allowed(words: list[str], uid: int | None) -> str | None:
    """Why this peer may not make this request (None: it may)."""
    if not words or (words[0].lower() in READ_ONLY and len(words) == 1):
        return None
    if uid is not None and uid in (0, os.geteuid()):
        return None
    return (
        f"{words[0][:40]} needs root (run it with sudo); other users of the control socket may "
        "only read: status, events, config, keys, join-stats\n"
    )


def answer(line: str, handlers: ControlHandlers) -> tuple[bool, str]:
    """(ok, body) for one request line."""
    words = line.split()
    if not words:
        return False, "no command; send status, expected N or events\n"
    command, args = words[0].lower(), words[1:]
    if command == "status" and not args:
        return True, _json(handlers.status())
    if command == "events" and not args:
        return True, _json(handlers.events())
    if command == "expected" and len(args) == 1:
        return _expected(args[0], handlers)
    if command in ("join-token", "join-stats", "join-reload"):
        return _join(words, handlers)
    return False, f"unknown request {line.strip()[:80]!r}; send status, expected N or events\n"


def _join(words: list[str], handlers: ControlHandlers) -> tuple[bool, str]:
    if handlers.join is None:
        return False, "this agent runs no join port (see its log); start it from node.toml\n"
    return handlers.join([words[0].lower(), *words[1:]])


def _expected(value: str, handlers: ControlHandlers) -> tuple[bool, str]:
    if value.lower() == "reset":
        refusal = handlers.set_expected(None)
    elif value.isdigit() and len(value) <= 10 and 1 <= int(value) <= MAX_EXPECTED_VOTES:
        refusal = handlers.set_expected(int(value))
    else:
        return False, f"{EXPECTED_RANGE}, not {value[:40]!r}\n"
    if refusal:
        return False, f"expected votes not changed: {refusal}\n"
    return True, _json(handlers.status())


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str) + "\n"


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by an earlier run; refuse (ConfigError) to delete anything
    else: `control_socket` naming a regular file or a directory is a configuration mistake."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(
            f"control_socket {path} exists and is not a socket; refusing to delete it: "
            "set control_socket to another path"
        )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def serve_control(path: Path, handlers: ControlHandlers) -> asyncio.AbstractServer:
    """Listen on `path` until the returned server is closed (a stale socket file is replaced;
    any other file there is a ConfigError, never deleted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_socket(path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                raw = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            except ValueError:  # the line outgrew the reader's limit (MAX_REQUEST)
                log.warning("control request refused", reason=f"longer than {MAX_REQUEST} bytes")
                writer.write(encode_reply(False, f"request longer than {MAX_REQUEST} bytes\n"))
                await writer.drain()
                return
            line = decode_request(raw)
            words = line.split()
            if (denied := not_allowed(words, peer_uid(writer))) is not None:
                ok, body = False, denied
                log.warning("control request refused", request=words[0][:40], reason="not root")
            elif words and words[0].lower() in CONFIG_COMMANDS and handlers.config is not None:
                ok, body = await handlers.config(words[0].lower(), words[1:])
                log.info("configuration request", request=line[:200], ok=ok, answer=body[:200])
            elif words and words[0].lower() in QDEVICE_COMMANDS and handlers.qdevice is not None:
                ok, body = await handlers.qdevice([words[0].lower(), *words[1:]])
                log.info("qdevice request", request=words[0], ok=ok, answer=body[:200])
            else:
                ok, body = answer(line, handlers)
            if line.lower().startswith("expected") and ok:
                log.info("expected votes set", request=line, via="control socket")
            writer.write(encode_reply(ok, body))
            await writer.drain()
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.debug("control request failed", error=str(exc))
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path=str(path), limit=MAX_REQUEST)
    path.chmod(0o660)
    return server
