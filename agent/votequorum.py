"""votequorum: the quorum verdict of one node, as a pure state machine.

Owns: expected votes (highest seen wins, run-time override), quorum = expected // 2 + 1, the
options of corosync's votequorum(5) (two_node, wait_for_all, last_man_standing + window,
auto_tie_breaker lowest / highest / list), the qdevice's votes, and the typed changes
(`QuorumGained`, `QuorumLost`, `ExpectedVotesChanged`), each with a one-sentence reason.
Must not touch: membership (it is handed the *installed* view), the qdevice session, clocks,
sockets or logs. Time is float seconds passed in (`now`).

Semantics (votequorum(5) section named in brackets):

* Votes: a member counts the votes it reports (`member_votes`), else its configured votes,
  else 1. total = member votes + `qdevice_votes`. [VARIOUS NOTES: quorum_votes]
* Expected votes: starts at `QuorumOptions.expected_votes`, else the configured nodes' votes
  plus the configured device's votes (constructor `qdevice_votes`, like corosync's
  quorum.device.votes) [OVERVIEW]. It rises to the highest value any member reports and to
  the total present, and never falls by itself ("the general behaviour of votequorum is to
  never decrease expected votes or quorum" [allow_downscale]). `reported_expected` is the
  value to put in heartbeats.
* Override (`set_expected_override`, like `corosync-quorumtool -e` / `pvecm expected`): this
  node uses max(override, total) and ignores members' reports until the override is cleared;
  it may lower expected below a majority (the operator's responsibility; S1 is void then).
  It is reported, so an override above the others' value raises theirs (highest wins).
* quorum = expected // 2 + 1; quorate when total >= quorum. [OVERVIEW]
* two_node: while expected is 2 and at most 2 nodes were ever known, quorum is 1; a third
  node disables it ("If more than 2 nodes join ... automatically disabled"). [two_node]
* wait_for_all (default: two_node): after start, not quorate until every configured node was a
  member of one view (and, if `expected_votes` is set higher, that many non-device votes were
  present), or until it joins a member that reports itself quorate and done waiting
  (`quorate_members`; votequorum does the same). Afterwards normal rules apply, also after
  losses. Flag `WaitForAllStatus` while waiting. [wait_for_all]
* last_man_standing: when one view (`view_key` and members) has been installed for
  `last_man_standing_window` seconds and the node is quorate, expected drops to the votes
  present, never below 2 unless auto_tie_breaker is on (then 1) [last_man_standing NOTES];
  it assumes one vote per node, as votequorum(5) does.
  Members' reports up to the pre-drop value no longer raise it (they are the cluster's old
  size, still in flight from peers whose window has not expired yet). Not while an override
  is set. `next_deadline()` is the window end.
* auto_tie_breaker: when the votes present are exactly half of expected, the partition holding
  the tie-breaker node is quorate: the lowest / highest configured node id, or the first id of
  `tie_breaker_nodes` that is a configured node. Deviation: votequorum(5) skips listed nodes
  that "were not in the cluster before the split"; nodes cannot agree on that set without more
  messages, so configured ids stand in for it (both halves then pick the same node: safe).
* qdevice: its votes count toward the total (flag `Qdevice`), except with last_man_standing
  or auto_tie_breaker, with which "the quorum device will be disabled". [LMS, ATB]
* No blip: the verdict depends only on the view passed to `update`, computed in one step, so a
  surviving majority's new view is quorate the moment it is installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from agent.config import QuorumOptions, TieBreaker

LMS_FLOOR = 2
"""last_man_standing never lowers expected votes below 2 ... [votequorum(5) LMS NOTES]"""
LMS_FLOOR_WITH_ATB = 1
"""... unless auto_tie_breaker is enabled too."""


@dataclass(frozen=True, slots=True)
class QuorumInput:
    """What quorum counts: the installed view and what its members report."""

    members: frozenset[int]
    """The installed view's members (this node included)."""
    member_votes: Mapping[int, int]
    """Votes each member reports in its heartbeats."""
    member_expected: Mapping[int, int]
    """expected_votes each member reports (0 = not reported)."""
    qdevice_votes: int = 0
    """Device votes this node may count now (0 = none, NACK or lost)."""
    view_key: tuple[int, int] = (0, 0)
    """The view's ring id (representative, seq): "the same view" for the LMS window."""
    quorate_members: frozenset[int] = frozenset()
    """Members whose heartbeats say they are quorate and not waiting for all (empty if the
    heartbeats do not say): joining them ends wait_for_all, as in votequorum."""


@dataclass(frozen=True, slots=True)
class QuorumStatus:
    """The verdict and the numbers behind it."""

    quorate: bool
    expected_votes: int
    total_votes: int
    quorum: int
    flags: frozenset[str]
    """Any of Quorate, TwoNode, WaitForAll, WaitForAllStatus, LastManStanding,
    AutoTieBreaker, Qdevice."""
    reason: str
    """One sentence: why quorate or not (`votemesh explain`)."""


@dataclass(frozen=True, slots=True)
class QuorumGained:
    """The node became quorate."""

    reason: str


@dataclass(frozen=True, slots=True)
class QuorumLost:
    """The node stopped being quorate."""

    reason: str


@dataclass(frozen=True, slots=True)
class ExpectedVotesChanged:
    """The expected votes this node uses (and reports) changed."""

    old: int
    new: int
    reason: str


QuorumChange = QuorumGained | QuorumLost | ExpectedVotesChanged

_NO_VIEW = QuorumInput(frozenset(), {}, {})


class Votequorum:
    """The quorum state of one node; `update` with every installed view or report change."""

    def __init__(
        self,
        node_id: int,
        options: QuorumOptions,
        configured_votes: Mapping[int, int],
        *,
        qdevice_votes: int = 0,
    ) -> None:
        """`qdevice_votes`: the configured device's votes (0 = no device); like corosync's
        quorum.device.votes they are part of the configured expected votes."""
        self._id = node_id
        self._opts = options
        self._configured = {n: max(0, v) for n, v in configured_votes.items()}
        self._configured.setdefault(node_id, max(0, options.votes))
        node_sum = sum(self._configured.values())
        device = 0 if self._device_disabled() else max(0, qdevice_votes)
        self._expected = max(1, options.expected_votes or node_sum + device)
        """Highest seen (sticky); lowered only by last_man_standing."""
        self._ignore_upto = 0
        """Member reports up to this value are stale (last_man_standing lowered past them)."""
        self._override: int | None = None
        self._known: set[int] = set(self._configured)
        self._waiting = options.effective_wait_for_all
        self._wfa_votes = max(node_sum, (options.expected_votes or 0) - device)
        """wait_for_all also needs this many votes present (the device need not be)."""
        self._inp = _NO_VIEW
        self._view: tuple[tuple[int, int], frozenset[int]] | None = None
        self._view_since = 0.0
        self._lms_window_passed = False
        self._cause = ""
        """Why expected votes moved during the current call ("" = the votes present did)."""
        self._status = self._evaluate()

    # -- public API -------------------------------------------------------------------------

    @property
    def status(self) -> QuorumStatus:
        """The current verdict."""
        return self._status

    @property
    def reported_expected(self) -> int:
        """The expected_votes this node puts in its heartbeats."""
        return self._status.expected_votes

    def update(self, inp: QuorumInput, now: float) -> list[QuorumChange]:
        """Recompute for an installed view and its members' reports; changes only."""
        view = (inp.view_key, inp.members)
        if view != self._view:
            self._view, self._view_since, self._lms_window_passed = view, now, False
        self._inp = inp
        self._known |= inp.members
        self._raise_expected()
        return self._settle(now)

    def set_expected_override(self, value: int | None, now: float) -> list[QuorumChange]:
        """Use `value` as expected votes (at least the votes present); None clears it."""
        if value is not None and value < 1:
            raise ValueError("expected votes override must be at least 1")
        self._override = value
        self._cause = "operator override cleared" if value is None else f"operator set {value}"
        self._raise_expected()
        return self._settle(now)

    def tick(self, now: float) -> list[QuorumChange]:
        """Let time pass: the last_man_standing window may have expired."""
        return self._settle(now)

    def next_deadline(self) -> float | None:
        """When `tick` may next change something (the LMS window end), else None."""
        if not self._lms_possible() or self._lms_window_passed:
            return None
        return self._view_since + self._opts.last_man_standing_window

    # -- votes and expected votes -----------------------------------------------------------

    def _device_disabled(self) -> bool:
        """votequorum(5): with last_man_standing or auto_tie_breaker the device is disabled."""
        return self._opts.last_man_standing or self._opts.auto_tie_breaker

    def _device_votes(self) -> int:
        return 0 if self._device_disabled() else max(0, self._inp.qdevice_votes)

    def _node_votes(self) -> int:
        votes = self._inp.member_votes
        return sum(max(0, votes.get(m, self._configured.get(m, 1))) for m in self._inp.members)

    def _total(self) -> int:
        return self._node_votes() + self._device_votes()

    def _raise_expected(self) -> None:
        """Highest seen wins: members' reports (not stale ones) and the votes present."""
        reports = [
            (v, m)
            for m, v in self._inp.member_expected.items()
            if m in self._inp.members and v > self._ignore_upto
        ]
        best, who = max(reports, default=(0, 0))
        if best > self._expected:
            self._expected, self._cause = best, f"node {who} reports expected votes {best}"
        total = self._total()
        if total > self._expected:
            self._expected, self._cause = total, f"{total} votes present exceed expected votes"

    def _effective_expected(self) -> int:
        if self._override is not None:
            return max(self._override, self._total())
        return self._expected

    # -- last_man_standing ------------------------------------------------------------------

    def _lms_possible(self) -> bool:
        return self._opts.last_man_standing and self._override is None and bool(self._inp.members)

    def _apply_lms(self, now: float) -> None:
        """Drop expected to the votes present once the view outlived the window, if quorate."""
        window = self._opts.last_man_standing_window
        if not self._lms_possible() or now < self._view_since + window:
            return
        self._lms_window_passed = True
        if not self._status.quorate:
            return
        floor = LMS_FLOOR_WITH_ATB if self._opts.auto_tie_breaker else LMS_FLOOR
        target = max(self._total(), floor)
        if target < self._expected:
            self._ignore_upto = max(self._ignore_upto, self._expected)
            self._expected = target
            self._cause = (
                f"last_man_standing: view {self._view_key_text()} unchanged for "
                f"{window:g} s with {self._total()} votes"
            )

    def _view_key_text(self) -> str:
        rep, seq = self._inp.view_key
        return f"{rep}/{seq}"

    # -- the verdict ------------------------------------------------------------------------

    def _settle(self, now: float) -> list[QuorumChange]:
        """Re-evaluate (twice if last_man_standing moved expected) and report the changes."""
        old = self._status
        self._end_wait_for_all()
        self._status = self._evaluate()
        self._apply_lms(now)
        self._status = self._evaluate()
        cause, self._cause = self._cause or "the votes present changed", ""
        return _changes(old, self._status, cause)

    def _two_node_active(self, expected: int) -> bool:
        return self._opts.two_node and expected == 2 and len(self._known) <= 2

    def _end_wait_for_all(self) -> None:
        """wait_for_all ends once all configured nodes (and votes) were present together, or
        when this node joins members that are quorate and no longer waiting."""
        inp = self._inp
        if self._waiting and set(self._configured) <= inp.members:
            self._waiting = self._node_votes() < self._wfa_votes
        if self._waiting and inp.quorate_members & (inp.members - {self._id}):
            self._waiting = False

    def _evaluate(self) -> QuorumStatus:
        expected, total = self._effective_expected(), self._total()
        two_node = self._two_node_active(expected)
        quorum = 1 if two_node else expected // 2 + 1
        flags = self._option_flags(two_node)
        if not self._inp.members:
            return QuorumStatus(False, expected, total, quorum, flags, "no view installed yet")
        if self._waiting:
            missing = sorted(set(self._configured) - self._inp.members)
            why = f"wait_for_all: not all nodes seen together yet (missing: {missing or 'votes'})"
            return QuorumStatus(False, expected, total, quorum, flags | {"WaitForAllStatus"}, why)
        status = QuorumStatus(False, expected, total, quorum, flags, "")
        return _with_verdict(status, self._tie_breaker(expected, total))

    def _option_flags(self, two_node: bool) -> frozenset[str]:
        opts = self._opts
        named = {
            "TwoNode": two_node,
            "WaitForAll": opts.effective_wait_for_all,
            "LastManStanding": opts.last_man_standing,
            "AutoTieBreaker": opts.auto_tie_breaker,
            "Qdevice": self._device_votes() > 0,
        }
        return frozenset(name for name, on in named.items() if on)

    def _tie_breaker(self, expected: int, total: int) -> tuple[bool, str] | None:
        """(quorate, why) when auto_tie_breaker decides (an even split), else None."""
        if not self._opts.auto_tie_breaker or total * 2 != expected:
            return None
        node = self._tie_breaker_node()
        holds = node in self._inp.members
        where = "holds" if holds else "does not hold"
        return holds, (
            f"exactly half the votes ({total} of {expected}) and this partition {where} "
            f"tie-breaker node {node}"
        )

    def _tie_breaker_node(self) -> int | None:
        ids = sorted(self._configured)
        mode = self._opts.auto_tie_breaker_node
        if mode is TieBreaker.LOWEST:
            return ids[0]
        if mode is TieBreaker.HIGHEST:
            return ids[-1]
        return next((n for n in self._opts.tie_breaker_nodes if n in self._configured), None)


def _with_verdict(status: QuorumStatus, tie: tuple[bool, str] | None) -> QuorumStatus:
    """Fill in quorate, the Quorate flag and the reason."""
    counts = f"{status.total_votes} of {status.expected_votes} expected votes present"
    if tie is not None:
        quorate, why = tie
        reason = f"{'quorate' if quorate else 'not quorate'} by auto_tie_breaker: {why}"
    else:
        quorate = status.total_votes >= status.quorum
        verdict = "quorate" if quorate else "not quorate"
        reason = f"{verdict}: {counts}, quorum is {status.quorum}"
    flags = status.flags | {"Quorate"} if quorate else status.flags
    return replace(status, quorate=quorate, flags=flags, reason=reason)


def _changes(old: QuorumStatus, new: QuorumStatus, cause: str) -> list[QuorumChange]:
    """The typed changes from `old` to `new`: expected votes first (a cause), then quorum."""
    out: list[QuorumChange] = []
    if new.expected_votes != old.expected_votes:
        out.append(ExpectedVotesChanged(old.expected_votes, new.expected_votes, cause))
    if new.quorate and not old.quorate:
        out.append(QuorumGained(new.reason))
    elif old.quorate and not new.quorate:
        out.append(QuorumLost(new.reason))
    return out
