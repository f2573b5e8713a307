"""AgentConfig validation: impossible or dangerous configurations are refused with one line."""

from __future__ import annotations

import pytest

from agent.config import AgentConfig, ConfigError, LinkConfig, PeerConfig, QuorumOptions, Timing


def base(**over: object) -> AgentConfig:
    fields: dict[str, object] = {
        "cluster_name": "c",
        "node_id": 1,
        "links": (LinkConfig(0, "127.0.0.1"),),
        "peers": (PeerConfig(2, "n2", ((0, "127.0.0.2", 5407),)),),
    }
    fields.update(over)
    return AgentConfig(**fields)  # type: ignore[arg-type]


def test_valid_config_passes() -> None:
    """A two-node static config validates."""
    base().validate()


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"node_id": 0}, "node_id"),
        ({"links": ()}, "links"),
        ({"links": (LinkConfig(0, "a"), LinkConfig(0, "b"))}, "unique"),
        ({"peers": (PeerConfig(1),)}, "differ from node_id"),
        ({"timing": Timing(heartbeat_interval=0)}, "heartbeat_interval"),
        ({"quorum": QuorumOptions(two_node=True, auto_tie_breaker=True)}, "exclude"),
        ({"peers": ()}, "expected_votes"),
        ({"quorum": QuorumOptions(votes=1000)}, "quorum.votes must be between 0 and 255"),
        ({"peers": (PeerConfig(2, votes=256),)}, "votes must be between 0 and 255"),
        ({"quorum": QuorumOptions(expected_votes=2**32)}, "between 1 and 1024000"),
    ],
)
def test_bad_config_is_one_line_error(over: dict[str, object], fragment: str) -> None:
    """Each mistake raises ConfigError whose single line names what to change."""
    with pytest.raises(ConfigError) as err:
        base(**over).validate()
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_discovery_only_cluster_needs_expected_votes() -> None:
    """With discovery and no static peers a node must be told the expected votes, else a node
    alone would count itself quorate; with expected_votes set it validates."""
    with pytest.raises(ConfigError, match="expected_votes"):
        base(peers=()).validate()
    base(peers=(), quorum=QuorumOptions(expected_votes=3)).validate()
    base(peers=(), discovery=False).validate()


THREE = (PeerConfig(2), PeerConfig(3))


@pytest.mark.parametrize(
    ("quorum", "warning"),
    [
        (QuorumOptions(), None),
        (QuorumOptions(expected_votes=3), None),
        (QuorumOptions(expected_votes=5), None),
        (QuorumOptions(expected_votes=1), "quorum is 1, every node that is cut off alone"),
        (QuorumOptions(expected_votes=2), None),  # 2 + 2 > 3: no two partitions
        (QuorumOptions(expected_votes=2, votes=2), "two partitions can both be quorate"),
        (QuorumOptions(auto_tie_breaker=True), "set wait_for_all = true"),
        (QuorumOptions(auto_tie_breaker=True, wait_for_all=True), None),
    ],
)
def test_unsafe_quorum_settings_are_warned(quorum: QuorumOptions, warning: str | None) -> None:
    """Issue 12 item 12: `expected_votes = 1` on three nodes makes each isolated node quorate;
    the agent warns loudly at start (the runtime logs these), as for other weaker settings."""
    warnings = base(peers=THREE, quorum=quorum).quorum_warnings()
    if warning is None:
        assert warnings == []
    else:
        (text,) = warnings
        assert warning in text


def test_failure_timeout_stretches_with_loss() -> None:
    """Up to 5 % loss the plain timeout; above, enough missed heartbeats that a false suspicion
    stays as unlikely as 6 losses in a row at 5 %, at most twice as many."""
    t = Timing.lan()
    assert t.failure_timeout_at(0.0) == t.failure_timeout_at(0.05) == t.failure_timeout
    assert t.failure_timeout_at(0.10) == pytest.approx(8 * 0.1 + 0.05)
    assert t.failure_timeout_at(0.20) == pytest.approx(12 * 0.1 + 0.05)
    assert t.failure_timeout_at(1.0) == t.max_failure_timeout == pytest.approx(1.25)
    assert t.proposal_ttl == t.max_failure_timeout
    for loss in (0.06, 0.1, 0.15, 0.2):
        k = round((t.failure_timeout_at(loss) - t.jitter_allowance) / t.heartbeat_interval)
        assert loss**k <= 0.05**6 * 1.0001
