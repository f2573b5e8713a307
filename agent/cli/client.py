"""The CLI's side of the agent's control socket: one request, the answer's JSON body.

Adapter ring; on the path of every `votemesh status` poll, so it imports only `_json` (the C
half of `json`) and `proto.runtime.control_client` (`_socket`); `pathlib` and the config loader
only when they are needed (see agent/cli/__init__.py).
"""

from __future__ import annotations

# The C scanner, not `json`: `import json` pulls in re, enum, functools and collections, ~7 ms
# per call where nothing else loaded them (a regular install; the editable one's finder does).
from _json import make_scanner

from proto.runtime.control_client import DEFAULT_TIMEOUT, request

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per CLI call
if TYPE_CHECKING:
    import argparse
    from pathlib import Path
    from typing import Any, Protocol

    class Where(Protocol):
        """What `ask` reads of the parsed command line (argparse.Namespace or the fast path's)."""

        socket: str | None
        config: str | None


DEFAULT_SOCKET = "/run/votemesh/agent.sock"


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 1."""


def socket_name(args: Where | argparse.Namespace) -> str:
    """--socket, else the control socket named by --config, else the default."""
    if args.socket:
        return str(args.socket)
    if args.config:
        from pathlib import Path  # noqa: PLC0415 - off the default path

        from agent.config import ConfigError  # noqa: PLC0415
        from agent.runtime.config_file import local_of  # noqa: PLC0415

        try:
            return str(local_of(Path(args.config)).control_socket)
        except ConfigError as exc:
            raise UserError(str(exc)) from None
    return DEFAULT_SOCKET


def socket_path(args: Where | argparse.Namespace) -> Path:
    """socket_name as a Path."""
    from pathlib import Path  # noqa: PLC0415 - not on the status path

    return Path(socket_name(args))


def ask(args: Where | argparse.Namespace, line: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Send one request; the answer's JSON body, or UserError saying what to do."""
    name = socket_name(args)
    try:
        ok, body = request(name, line, timeout)
    except OSError as exc:
        raise UserError(_unreachable(name, exc, timeout)) from None
    if not ok:
        raise UserError(body.strip())
    try:
        return loads(body)
    except ValueError:
        raise UserError(f"the agent on {_shown(name)} sent something that is not JSON") from None


def _shown(name: str) -> str:
    """The socket path as messages print it (pathlib's normal form, as before)."""
    from pathlib import Path  # noqa: PLC0415 - error paths only

    return str(Path(name))


def _unreachable(name: str, exc: OSError, timeout: float) -> str:
    path = _shown(name)
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return f"no agent is listening on {path}; is votemesh-agent running? (--socket PATH)"
    if isinstance(exc, PermissionError):
        return f"{path}: permission denied; run as root or the votemesh group"
    if isinstance(exc, TimeoutError):
        return f"the agent on {path} did not answer within {timeout:g} s"
    return f"{path}: {exc.strerror or exc}"


_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": -float("inf")}


class _Defaults:
    """What the C scanner reads of a json.JSONDecoder: json.loads's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = make_scanner(_Defaults())  # type: ignore[arg-type]  # typeshed wants a JSONDecoder
_JSON_SPACE = " \t\n\r"


def loads(text: str) -> Any:
    """json.loads(text) for a str, without importing `json`: the same value, and ValueError
    where json.loads raises (tests/agent/test_cli_fast.py compares the two)."""
    start = len(text) - len(text.lstrip(_JSON_SPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError(f"Expecting value at {start}") from None
    if text[end:].strip(_JSON_SPACE):
        raise ValueError(f"Extra data at {end}")
    return value
