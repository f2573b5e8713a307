"""Persisted incarnation and max_seq, and cluster key files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.config import ConfigError
from agent.runtime.keys import KEY_BYTES, keygen, load_key, load_keys
from agent.runtime.state import StateDir
from proto.mesh_messages import SEQ_MAX


class FakeClock:
    """A wall clock in microseconds that the test moves by hand."""

    def __init__(self, us: int) -> None:
        self.us = us

    def __call__(self) -> int:
        return self.us


def test_incarnation_grows_even_when_the_clock_goes_back(tmp_path: Path) -> None:
    """Each start gets a larger incarnation than the last: max(last + 1, clock), so a clock
    stepped back (or frozen) never yields a value used before."""
    clock = FakeClock(1_000_000)
    seen = [StateDir(tmp_path, clock).next_incarnation()]
    for us in (1_000_000, 500, 2_000_000, 10):
        clock.us = us
        seen.append(StateDir(tmp_path, clock).next_incarnation())
    assert seen == [1_000_000, 1_000_001, 1_000_002, 2_000_000, 2_000_001]


def test_incarnation_from_the_clock_when_state_is_lost(tmp_path: Path) -> None:
    """Without a state file the incarnation is the wall clock in microseconds (never 0)."""
    assert StateDir(tmp_path / "a", FakeClock(123)).next_incarnation() == 123
    assert StateDir(tmp_path / "b", FakeClock(0)).next_incarnation() == 1


def test_state_files_are_private_and_replaced_atomically(tmp_path: Path) -> None:
    """The directory is created 0700; values are whole files, no temporary file is left."""
    state = StateDir(tmp_path / "state", FakeClock(5))
    state.next_incarnation()
    state.store_max_seq(7)
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["incarnation", "max_seq"]
    assert (tmp_path / "state" / "max_seq").read_text() == "7\n"


def test_a_start_begins_above_the_ring_the_replica_took_part_in(tmp_path: Path) -> None:
    """boot_max_seq: the persisted max_seq, raised to the replica's promised ring's sequence (a
    lost or failed max_seq write must not make the boot view a ring id below it), bounded so a
    new ring id still fits."""
    state = StateDir(tmp_path)
    assert state.boot_max_seq(0) == 0
    state.store_max_seq(9)
    assert state.boot_max_seq(4) == 9
    assert state.boot_max_seq(50) == 50
    assert state.boot_max_seq(SEQ_MAX + 5) == SEQ_MAX - 1


def test_max_seq_persists_and_never_goes_down(tmp_path: Path) -> None:
    """store_max_seq keeps the highest value across instances; lower values are ignored."""
    assert StateDir(tmp_path).load_max_seq() == 0
    StateDir(tmp_path).store_max_seq(9)
    StateDir(tmp_path).store_max_seq(4)
    assert StateDir(tmp_path).load_max_seq() == 9


def test_corrupt_state_is_a_one_line_error(tmp_path: Path) -> None:
    """A garbled state file stops the start with a one-line error saying to remove it."""
    (tmp_path / "incarnation").write_text("12ab\n")
    with pytest.raises(ConfigError, match=r"is corrupt .* remove it"):
        StateDir(tmp_path).next_incarnation()


def test_keygen_writes_a_private_key_and_never_overwrites(tmp_path: Path) -> None:
    """keygen writes KEY_BYTES random bytes, mode 0600 whatever the umask, and refuses to
    replace an existing file."""
    path = tmp_path / "cluster.key"
    old = os.umask(0)
    try:
        keygen(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == KEY_BYTES
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="already exists; refusing to overwrite"):
        keygen(path)
    assert path.read_bytes() == before
    assert load_key(path).secret == before


def test_key_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    """A group- or world-readable key is refused, and the message is the chmod that fixes it."""
    path = tmp_path / "cluster.key"
    keygen(path)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match=f"fix it: chmod 600 {path}$"):
        load_key(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"x" * 31, "has 31 bytes, needs 32 or more"), (None, "does not exist; create it")],
)
def test_short_or_missing_key_is_a_one_line_error(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    """Keys shorter than 32 bytes and missing key files are refused with what to do."""
    path = tmp_path / "cluster.key"
    if content is not None:
        path.write_bytes(content)
        path.chmod(0o600)
    with pytest.raises(ConfigError, match=expected):
        load_keys((str(path),))


def test_corosync_authkey_size_works(tmp_path: Path) -> None:
    """A 256-byte corosync authkey is a valid cluster key."""
    path = tmp_path / "authkey"
    path.write_bytes(os.urandom(256))
    path.chmod(0o400)
    assert len(load_key(path).secret) == 256
