"""The CLI's side of the agent's control socket: one request, the answer as JSON or typed.

Adapter ring; imports only the standard library, `proto.runtime.control_client` and
`agent.status` (kept cheap: see agent/cli/__init__.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agent.status import NodeStatus, from_json
from proto.runtime.control_client import DEFAULT_TIMEOUT, request

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms per CLI call
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/run/votemesh/agent.sock"


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 1."""


def socket_path(args: argparse.Namespace) -> Path:
    """--socket, else the control socket named by --config, else the default."""
    if args.socket:
        return Path(args.socket)
    if args.config:
        from agent.config import ConfigError  # noqa: PLC0415
        from agent.runtime.config_file import local_of  # noqa: PLC0415

        try:
            return Path(local_of(Path(args.config)).control_socket)
        except ConfigError as exc:
            raise UserError(str(exc)) from None
    return Path(DEFAULT_SOCKET)


def ask(args: argparse.Namespace, line: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """Send one request; the answer's JSON body, or UserError saying what to do."""
    path = socket_path(args)
    try:
        ok, body = request(path, line, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        raise UserError(
            f"no agent is listening on {path}; is votemesh-agent running? (--socket PATH)"
        ) from None
    except PermissionError:
        raise UserError(f"{path}: permission denied; run as root or the votemesh group") from None
    except TimeoutError:
        raise UserError(f"the agent on {path} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror or exc}") from None
    if not ok:
        raise UserError(body.strip())
    try:
        return json.loads(body)
    except ValueError:
        raise UserError(f"the agent on {path} sent something that is not JSON") from None


def fetch_status(args: argparse.Namespace) -> tuple[NodeStatus, dict[str, Any]]:
    """The typed status and its JSON document."""
    doc = ask(args, "status")
    return from_json(doc), doc
