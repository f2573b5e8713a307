"""User mistakes around `create` / `add` found by the issue 8 audit: one line, exit 1, nothing
written, and for `add` nothing asked of the cluster (its change could not be undone from here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config_replication as cr
from agent.cli import main as cli
from proto.join import JoinString, make_token
from tests.agent.cluster_fixtures import cluster


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


def test_a_change_forwarded_by_a_node_outside_the_view_is_not_proposed() -> None:
    """The representative of a ready view {1, 2} proposes a Forward only from a member of its
    view: node 3 (removed, or cut off; it may still hold the key and know the ring id) asking
    to add itself back is answered `view changed; retry` and nothing is proposed or changed.
    Before the fix the representative proposed it to the view (and committed it on the acks)."""
    rep = cr.ConfigReplica(1, cluster([1, 2], version=1))
    ring = cr.Ring(5, 1)
    rep.handle(cr.QuorumInput(True, 2, 2))
    rep.handle(cr.ViewChanged(ring, frozenset({1, 2})))
    rep.handle(cr.Received(2, cr.State(ring, rep.committed, None)))
    assert rep.settled
    forged = cr.Forward(ring, 7, 1, cluster([1, 2, 3], version=1))
    out = rep.handle(cr.Received(3, forged))
    assert not [e for e in out if isinstance(e, cr.Send) and isinstance(e.message, cr.Propose)]
    assert [(e.to, e.message) for e in out if isinstance(e, cr.Send)] == [
        (3, cr.Result(7, False, "view changed; retry"))
    ]
    assert rep.committed.version == 1
