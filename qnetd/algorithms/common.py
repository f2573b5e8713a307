"""What the decision algorithms share: default handlers, typed private data, heuristics scales.

Owns the "nothing to do" answer of every `qnetd.model.Algorithm` hook (so each algorithm module
states only what it does differently), the typed accessors for `ClientState.algo` /
`Cluster.algo`, and the two heuristics scales of reference section 7. Must not touch the stored
lists or ring ids (the core stores them, reference 4.6) and has no clock, sockets or logging.
"""

from __future__ import annotations

from typing import Any, TypeVar

from proto.qnetd_enums import DecisionAlgorithm, Heuristics, ReplyErrorCode, TieBreakerMode
from proto.qnetd_options import NodeInfo, RingId, TieBreaker
from qnetd.model import AlgoResult, ArmTimer, ClientState, Cluster, TimerResult, VoteSend

T = TypeVar("T")

HEURISTICS_RANK: dict[Heuristics | None, int] = {
    Heuristics.PASS: 2,
    None: 1,
    Heuristics.FAIL: 0,
}
"""2nodelms ordering, reference 2.3: pass > undefined > fail."""


def heuristics_score(heuristics: Heuristics | None) -> int:
    """A member's heuristics contribution to a partition score: pass +1, fail -1, else 0."""
    if heuristics is Heuristics.PASS:
        return 1
    if heuristics is Heuristics.FAIL:
        return -1
    return 0


def private(store: dict[str, Any], kind: type[T]) -> T:
    """The algorithm's record of type `kind` in `store`, created on first use."""
    value = store.get(kind.__name__)
    if not isinstance(value, kind):
        value = kind()
        store[kind.__name__] = value
    return value


def quarter_heartbeat(client: ClientState) -> ArmTimer:
    """Re-run after heartbeat / 4, as qnetd 3.0.3's algorithm timer does (reference 7.3)."""
    return ArmTimer(delay_ms=client.heartbeat_interval_ms / 4)


def mode_text(tb: TieBreaker) -> str:
    """The tie-breaker as a decision log names it: lowest, highest or node id N."""
    if tb.mode is TieBreakerMode.LOWEST:
        return "lowest"
    if tb.mode is TieBreakerMode.HIGHEST:
        return "highest"
    return f"node id {tb.node_id}"


def ids_text(ids: tuple[int, ...]) -> str:
    """Node ids as the decision log prints them: `[1, 2]`."""
    return str(list(ids))


class AlgorithmDefaults:
    """Every hook of `qnetd.model.Algorithm` answering "nothing to do".

    Subclasses override the hooks their reference table gives a behaviour; the rest keep these
    answers: INIT succeeds, node lists and heuristics get NO_CHANGE, ASK_FOR_VOTE gets NO_CHANGE,
    acknowledgements, disconnects and timers produce nothing.
    """

    code: DecisionAlgorithm

    def client_init(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
    ) -> ReplyErrorCode | None:
        """No per-client setup needed: INIT succeeds."""
        return None

    def config_node_list(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
        nodes: tuple[NodeInfo, ...],  # noqa: ARG002 - interface argument
        config_version: int | None,  # noqa: ARG002 - interface argument
        initial: bool,  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """Config lists change nothing: [NO_CHANGE]."""
        return AlgoResult()

    def membership_node_list(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
        ring_id: RingId,  # noqa: ARG002 - interface argument
        nodes: tuple[int, ...],  # noqa: ARG002 - interface argument
        heuristics: Heuristics | None,  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """Membership lists change nothing: [NO_CHANGE]."""
        return AlgoResult()

    def quorum_node_list(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
        quorate: bool,  # noqa: ARG002 - interface argument
        nodes: tuple[NodeInfo, ...],  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """Quorum lists change nothing: [NO_CHANGE]."""
        return AlgoResult()

    def heuristics_change(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
        heuristics: Heuristics,  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """A heuristics change is only stored (by the core): [NO_CHANGE]."""
        return AlgoResult()

    def ask_for_vote(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
    ) -> AlgoResult:
        """[NO_CHANGE]."""
        return AlgoResult()

    def vote_info_reply(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
        seq: int,  # noqa: ARG002 - interface argument
    ) -> tuple[VoteSend, ...]:
        """Acknowledgements release nothing."""
        return ()

    def disconnect(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
        server_going_down: bool,  # noqa: ARG002 - interface argument
    ) -> tuple[VoteSend, ...]:
        """Other clients are not re-evaluated."""
        return ()

    def timer(
        self,
        cluster: Cluster,  # noqa: ARG002 - interface argument
        client: ClientState,  # noqa: ARG002 - interface argument
    ) -> TimerResult:
        """No algorithm timer: nothing happens."""
        return TimerResult()
