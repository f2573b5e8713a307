"""agent/votequorum.py: the quorum verdict, option by option, with votequorum(5)'s examples."""

from __future__ import annotations

from collections.abc import Iterable

from agent.config import QuorumOptions
from agent.votequorum import (
    QuorumGained,
    QuorumInput,
    QuorumLost,
    Votequorum,
)


def view(
    members: Iterable[int],
    *,
    expected: int = 0,
    key: tuple[int, int] = (1, 1),
    qdevice: int = 0,
    votes: int = 1,
) -> QuorumInput:
    """A view whose members each report `votes` votes and `expected` expected votes."""
    ids = frozenset(members)
    return QuorumInput(ids, dict.fromkeys(ids, votes), dict.fromkeys(ids, expected), qdevice, key)


def cluster(n: int, me: int = 1, **options: object) -> Votequorum:
    """Node `me` of a cluster of nodes 1..n with one vote each."""
    opts = QuorumOptions(**options)  # type: ignore[arg-type]
    return Votequorum(me, opts, dict.fromkeys(range(1, n + 1), 1))


def test_before_any_view_not_quorate() -> None:
    """Until a view is installed the node is not quorate and says why."""
    vq = cluster(3)
    assert not vq.status.quorate
    assert vq.status.expected_votes == 3
    assert vq.status.quorum == 2
    assert vq.status.reason == "no view installed yet"


def test_five_nodes_split_three_two() -> None:
    """votequorum(5): 5 nodes, quorum 3: the 3-side stays quorate, the 2-side loses quorum."""
    big, small = cluster(5, me=1), cluster(5, me=5)
    assert big.update(view(range(1, 6)), 0.0) == [QuorumGained(big.status.reason)]
    small.update(view(range(1, 6)), 0.0)
    assert big.update(view([1, 2, 3], key=(1, 2)), 1.0) == []
    assert big.status.quorate
    changes = small.update(view([4, 5], key=(4, 2)), 1.0)
    assert changes == [QuorumLost(small.status.reason)]
    assert "2 of 5" in small.status.reason


def test_no_blip_when_majority_survives() -> None:
    """5 members -> 4 members: quorate before and after, and no QuorumLost is emitted."""
    vq = cluster(5)
    vq.update(view(range(1, 6)), 0.0)
    assert vq.update(view(range(1, 5), key=(1, 2)), 0.5) == []
    assert vq.status.quorate
    assert vq.status.total_votes == 4
