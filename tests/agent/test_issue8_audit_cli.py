"""User mistakes around `create` / `add` found by the issue 8 audit: one line, exit 1, nothing
written, and for `add` nothing asked of the cluster (its change could not be undone from here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main as cli
from proto.join import JoinString, make_token


@pytest.mark.parametrize("verb", ["create", "add"])
def test_an_unusable_config_dir_is_one_line_before_anything_happens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    """--config-dir under a regular file: exit 1, one line naming the directory, no traceback,
    no state dir made; `add` says so before contacting the member in the join string (so its
    progress line `contacting ...` never appears). Before the fix: a FileNotFoundError /
    NotADirectoryError traceback from mkdir, after the key and certificates were made."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    where = ["--config-dir", str(blocker / "etc"), "--state-dir", str(tmp_path / "state")]
    first = ["create", "prod"] if verb == "create" else ["add", _join_string()]
    assert cli([*first, "--name", "a", "--link0", "10.0.0.1", *where]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert f"cannot create {blocker / 'etc'}: {blocker} is not a directory" in err
    assert "contacting" not in err
    assert not (tmp_path / "state").exists()


def _join_string() -> str:
    """A well-formed join string naming an address nobody listens on."""
    return JoinString("prod", (("127.0.0.1", 9),), bytes(32), make_token(b"t" * 32)).encode()
