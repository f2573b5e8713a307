"""The replication state on disk: round trip, missing file, corrupt or truncated file."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError
from agent.config_replication import Persist, Ring, Staged
from agent.runtime import cluster_store
from tests.agent.cluster_fixtures import cluster


def test_the_state_round_trips_and_a_missing_file_is_none(tmp_path: Path) -> None:
    """What save wrote, load returns; before the first save there is nothing."""
    assert cluster_store.load(tmp_path) is None
    state = Persist(
        cluster(range(1, 4), 3), Staged(Ring(9, 2), cluster(range(1, 5), 4)), Ring(9, 2)
    )
    cluster_store.save(tmp_path, state)
    assert cluster_store.load(tmp_path) == state
    assert (tmp_path / "cluster-config").stat().st_mode & 0o777 == 0o600
    plain = Persist(cluster(range(1, 3), 1), None, None)
    cluster_store.save(tmp_path, plain)
    assert cluster_store.load(tmp_path) == plain


@pytest.mark.parametrize("cut", [1, 10, -1])
def test_a_truncated_or_corrupt_file_is_refused_in_one_line(tmp_path: Path, cut: int) -> None:
    """A file cut short or with a flipped name is refused with one line naming the file and
    what happens next; nothing is loaded."""
    cluster_store.save(tmp_path, Persist(cluster(range(1, 4), 2), None, Ring(3, 1)))
    path = tmp_path / "cluster-config"
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut > 0 else data.replace(b"node2", b"node1"))
    with pytest.raises(ConfigError, match="take the cluster's copy") as err:
        cluster_store.load(tmp_path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)
