"""The agent's and qnetd's `sd_notify` are one function kept twice (STYLE.md: the two daemons
never import each other): the same code, and the same behaviour on a real socket."""

from __future__ import annotations

import ast
import inspect
import socket
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.runtime import systemd
from qnetd.runtime import observability

COPIES = [systemd.sd_notify, observability.sd_notify]


def body(function: Callable[[str], bool]) -> str:
    """The function's code without its docstring, normalised by the AST."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    definition = tree.body[0]
    assert isinstance(definition, ast.FunctionDef)
    definition.body = definition.body[1:]  # the docstring may differ
    return ast.dump(definition)


def test_the_copies_are_the_same_code() -> None:
    """Change one, change the other."""
    assert body(systemd.sd_notify) == body(observability.sd_notify)


@pytest.mark.parametrize("sd_notify", COPIES, ids=["agent", "qnetd"])
def test_a_missing_notify_socket_is_not_an_error(
    sd_notify: Callable[[str], bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NOTIFY_SOCKET naming nothing gives False (qnetd raised FileNotFoundError before, and so
    failed to start when its notify socket was gone); a bound socket receives the state."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sd_notify("READY=1") is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "gone.sock"))
        sock.settimeout(2)
        assert sd_notify("READY=1") is True
        assert sock.recv(100) == b"READY=1"
