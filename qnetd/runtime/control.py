"""Local control socket: the corosync-qnetd-tool protocol, plus `json`.

One request per connection: a text line (`status [verbose]`, `list [verbose] [cluster NAME]`,
`json`, `shutdown`), answered with `OK` or `Error` on the first line, then the text; the server
closes the socket after answering (reference 9). `corosync-qnetd-tool -p SOCKET -l` works too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import shlex
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog

from proto.control_frame import decode_request, encode_reply
from qnetd import status

log = structlog.get_logger("votemesh.qnetd.control")


def answer(line: str, snap: dict[str, Any]) -> tuple[bool, str]:
    """(ok, text) for one request line."""
    try:
        words = shlex.split(line.replace("\0", " "))
    except ValueError as exc:
        return False, f"Can't parse command: {exc}\n"
    if not words:
        return False, "No command specified\n"
    command, args = words[0].lower(), [w.lower() for w in words[1:]]
    verbose = "verbose" in args
    if command == "status":
        return True, status.format_status(snap, verbose)
    if command == "list":
        cluster = words[words.index("cluster") + 1] if "cluster" in words[:-1] else None
        return True, status.format_list(snap, verbose, cluster)
    if command == "json":
        return True, json.dumps(snap, indent=2, sort_keys=True) + "\n"
    return False, f"Unknown command '{words[0]}'\n"


class ControlSocketInUseError(Exception):
    """Another live server answers on the control socket we were told to use."""


@contextlib.contextmanager
def claim_control_socket(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `PATH.lock` while inside, else ControlSocketInUseError.

    Of two servers started at the same moment with the same control socket only one gets past
    this: the liveness probe alone has a window between probe and bind in which both pass (and
    the second then replaces the first's socket). The kernel drops the lock when the process
    dies, so a crash leaves nothing to clean up; the lock file itself stays (it is empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ControlSocketInUseError(str(path)) from None
        yield
    finally:
        os.close(fd)


async def refuse_live_control_socket(path: Path, timeout: float = 2.0) -> None:
    """Raise ControlSocketInUseError when something accepts connections on `path`.

    A stale socket file (nobody listening: connection refused) or no file is fine: `serve_control`
    replaces it. Taking over a live one would leave the running server unreachable."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        return  # no file, a stale socket, or not a socket at all: nobody answers there
    except TimeoutError as exc:  # accepted but silent: alive (a hung server is still a server)
        raise ControlSocketInUseError(str(path)) from exc
    writer.close()
    raise ControlSocketInUseError(str(path))


def check_socket_path(path: Path) -> None:
    """FileExistsError (nothing removed) when `path` exists and is not a socket: a mistyped
    --control-socket or --http-listen unix:PATH must never delete a file."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(
            errno.EEXIST,
            "exists and is not a socket (nothing removed); give a socket path",
            str(path),
        )


def remove_stale_socket(path: Path) -> None:
    """Make room for a unix socket at `path`: a leftover socket is removed, any other file refused
    (`check_socket_path`)."""
    check_socket_path(path)
    path.unlink(missing_ok=True)


async def serve_control(
    path: Path, get_snapshot: Callable[[], dict[str, Any]], shutdown: Callable[[], None]
) -> asyncio.AbstractServer:
    """Listen on a unix socket (mode 0660) until the returned server is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_socket(path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = decode_request(await asyncio.wait_for(reader.readline(), 5.0))
            stop = line.lower() == "shutdown"
            ok, text = (True, "") if stop else answer(line, get_snapshot())
            writer.write(encode_reply(ok, text))
            await writer.drain()
            if stop:
                log.info("shutdown requested", via="control socket")
                shutdown()
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.debug("control request failed", error=str(exc))
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path=str(path))
    path.chmod(0o660)
    return server
