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
* Expected votes (design §3.8): starts at `QuorumOptions.expected_votes`, else the configured
  nodes' votes plus the configured device's votes (constructor `qdevice_votes`, like corosync's
  quorum.device.votes) [OVERVIEW]. It rises to the votes present and to the value reported by
  members that are quorate and not waiting (`quorate_members`); an inquorate member's report
  never raises it (corosync sets it to our own). It does not fall by itself ("the general
  behaviour of votequorum is to never decrease expected votes or quorum" [allow_downscale]),
  except: a node that is not quorate takes a quorate member's value even when lower (corosync's
  allow_downgrade on nodeinfo), last_man_standing, an accepted override, `reconfigure`.
  `reported_expected` is the value to put in heartbeats.
* Override (`set_expected`, like `corosync-quorumtool -e` / `pvecm expected`): one-shot and for
  the whole view: refused (`ExpectedRefused`) when below the votes present or when it would make
  this quorate node inquorate; else applied at once and published as `expected_set` (an
  `ExpectedSet` with a generation and the view's ring id), which the other members apply with
  `receive_expected_set` after the same checks. Afterwards the normal rules apply again.
  Reports from members that have not applied the newest set yet (`member_set_keys`) are stale.
* quorum = expected // 2 + 1; quorate when total >= quorum. [OVERVIEW]
* two_node: while expected is 2 and at most 2 nodes were ever known, quorum is 1; a third
  node disables it ("If more than 2 nodes join ... automatically disabled"). [two_node]
* wait_for_all (default: two_node): after start, not quorate until the votes present reach
  expected votes (corosync's test; an override can so end it), or every configured node was a
  member of one view (and, if `expected_votes` is set higher, that many non-device votes were
  present), or until it joins a member that reports itself quorate and done waiting
  (`quorate_members`; votequorum does the same). Afterwards normal rules apply, also after
  losses (corosync's code re-arms it when inquorate, but a stale quorate flag in the next
  ring's nodeinfo usually clears it again; docs/agent.md `vqsim:wfa-rearm`). Flag
  `WaitForAllStatus` while waiting. [wait_for_all]
* last_man_standing: a window of `last_man_standing_window` seconds starts when members left
  and at least quorum nodes remain (with auto_tie_breaker also when at most quorum remain
  holding the lowest id of the last quorate view), as corosync's sync_init; a join neither
  starts nor stops it. When it ends and the node is quorate, expected drops to the votes
  present, never below 2 unless auto_tie_breaker is on (then 1) [last_man_standing NOTES];
  it assumes one vote per node, as votequorum(5) does.
  Members' reports up to the pre-drop value no longer raise it (they are the cluster's old
  size, still in flight from peers whose window has not expired yet). `next_deadline()` is the
  window end.
* auto_tie_breaker: when the votes present are exactly half of expected (corosync: expected
  // 2, which with odd expected votes can grant two partitions; we do not copy that) and the
  previous view had fewer than quorum more members than this one (corosync's guard), the
  partition is quorate if it holds the tie-breaker node and every member names the same one
  (`member_tie_breakers`). A node's tie-breaker (`tie_breaker`) is the lowest / highest / first
  listed member of the last view in which it was quorate by votes (corosync's set, for lowest
  and highest; none before the first such view, and none once it `proposed` a later majority).
  Unanimity and the proposal rule are ours: without them two partitions can be quorate at
  once, in corosync too (design §3.8 has the case and the proof).
* qdevice: its votes count toward the total (flag `Qdevice`), except with last_man_standing
  or auto_tie_breaker, with which "the quorum device will be disabled". [LMS, ATB]
* No blip: the verdict depends only on the view passed to `update`, computed in one step, so a
  surviving majority's new view is quorate the moment it is installed.
* Run-time configuration change (`reconfigure`, design §3.9 "Run-time changes"): the
  configured votes, `expected_votes`, `two_node` and the device's votes follow at once (expected
  votes also downwards); the other options keep their running values until a restart
  (`runtime_options`), as corosync's reload does. With `transition_until` the configuration it
  replaces stays a *constraint* until then: quorate also needs the counted members to hold the
  quorum of the replaced configuration with its votes (joint counting; `jump` makes the
  constraint unsatisfiable: the versions in between are unknown). `disable` ends quorum for
  good (the node was removed from the configuration).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from agent.config import MAX_EXPECTED_VOTES, QuorumOptions, TieBreaker

LMS_FLOOR = 2
"""last_man_standing never lowers expected votes below 2 ... [votequorum(5) LMS NOTES]"""
LMS_FLOOR_WITH_ATB = 1
"""... unless auto_tie_breaker is enabled too."""


@dataclass(frozen=True, slots=True)
class ExpectedSet:
    """An accepted `votemesh expected N`: applied once by every member of view `ring`."""

    generation: int
    origin: int
    value: int
    ring: tuple[int, int]

    @property
    def key(self) -> tuple[int, int]:
        """Newer sets have higher keys (generation, then origin id)."""
        return (self.generation, self.origin)


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
    heartbeats do not say): joining them ends wait_for_all, as in votequorum; only their
    expected votes count."""
    member_set_keys: Mapping[int, tuple[int, int]] = field(default_factory=dict)
    """The `ExpectedSet.key` each member last applied (missing = (0, 0))."""
    member_tie_breakers: Mapping[int, int] = field(default_factory=dict)
    """The tie-breaker node each member reports (`Votequorum.tie_breaker`; missing = 0)."""


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


@dataclass(frozen=True, slots=True)
class ExpectedRefused:
    """An expected votes override was refused; nothing changed."""

    value: int
    reason: str


QuorumChange = QuorumGained | QuorumLost | ExpectedVotesChanged | ExpectedRefused

RESTART_ONLY = (
    "wait_for_all",
    "last_man_standing",
    "last_man_standing_window",
    "auto_tie_breaker",
    "auto_tie_breaker_node",
    "tie_breaker_nodes",
)
"""Quorum options a run-time change does not apply (corosync reads them only at start:
votequorum_readconfig with runtime set); `wait_for_all` while it follows two_node excepted."""


def runtime_options(
    running: QuorumOptions, wanted: QuorumOptions
) -> tuple[QuorumOptions, tuple[str, ...]]:
    """The options a run-time change applies: `wanted`, with the RESTART_ONLY ones kept at their
    `running` values; and the names of those that differ (they need a restart)."""
    kept = tuple(
        name
        for name in RESTART_ONLY
        if getattr(running, name) != getattr(wanted, name)
        and not (name == "wait_for_all" and _follows_two_node(running, wanted))
    )
    options = replace(wanted, **{name: getattr(running, name) for name in kept})
    return options, tuple(f"quorum.{name}" for name in kept)


def _follows_two_node(running: QuorumOptions, wanted: QuorumOptions) -> bool:
    return running.wait_for_all is None and wanted.wait_for_all is None


@dataclass(frozen=True, slots=True)
class _Constraint:
    """A replaced configuration quorum must still satisfy until `until` (joint counting)."""

    until: float
    votes: Mapping[int, int]
    """Its configured votes per node."""
    listed: bool
    """It listed nodes (else members it did not know counted the votes they report)."""
    device: int
    """Its device votes (at most these count)."""
    quorum: int
    """The votes it needed (0 with `jump`: never satisfied)."""
    label: str


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
        self._device_configured = 0 if self._device_disabled() else max(0, qdevice_votes)
        self._configure(configured_votes)
        self._expected = self._configured_expected()
        """Highest seen (sticky); lowered only as the module docstring says."""
        self._ignore_upto = 0
        """Member reports up to this value are stale (last_man_standing lowered past them)."""
        self._set: ExpectedSet | None = None
        """The newest override applied (or refused) here."""
        self._known: set[int] = set(self._configured)
        self._waiting = options.effective_wait_for_all
        self._inp = _NO_VIEW
        self._view: tuple[tuple[int, int], frozenset[int]] | None = None
        self._previous: frozenset[int] = frozenset()
        """The members of the view before the current one (auto_tie_breaker's guard)."""
        self._tie_members: frozenset[int] = frozenset()
        """The members of the last view in which this node was quorate by votes (L)."""
        self._tie_ring: tuple[int, int] = (0, 0)
        """L's ring id."""
        self._tie_high: tuple[int, int] = (0, 0)
        """The highest ring id (by sequence, then representative) of a member set holding a
        majority of votes that this node installed or proposed; the tie-breaker counts only
        while it is L's (design §3.8)."""
        self._proposed_votes: tuple[frozenset[int], dict[int, int], int] | None = None
        """(members, the configured votes, their sum) of the last `proposed` (a cache)."""
        self._node_votes_of: tuple[QuorumInput, dict[int, int], int] | None = None
        """(input, configured votes, `_node_votes`) of the last count (a cache)."""
        self._lms_due: float | None = None
        """When the last_man_standing window ends (None: no window running)."""
        self._cause = ""
        """Why expected votes moved during the current call ("" = the votes present did)."""
        self._constraints: list[_Constraint] = []
        """Replaced configurations quorum must still satisfy (`reconfigure`)."""
        self._disabled = ""
        """Why quorum is off for good ("" = it is not): `disable`."""
        self._now = 0.0
        self._status = self._evaluate()

    def _configure(self, configured_votes: Mapping[int, int]) -> None:
        self._configured = {n: max(0, v) for n, v in configured_votes.items()}
        self._configured.setdefault(self._id, max(0, self._opts.votes))
        node_sum = sum(self._configured.values())
        self._wfa_votes = max(node_sum, (self._opts.expected_votes or 0) - self._device_configured)
        """wait_for_all also ends once this many node votes are present (the device need not)."""

    def _configured_expected(self) -> int:
        node_sum = sum(self._configured.values())
        return max(1, self._opts.expected_votes or node_sum + self._device_configured)

    # -- public API -------------------------------------------------------------------------

    @property
    def status(self) -> QuorumStatus:
        """The current verdict."""
        return self._status

    @property
    def reported_expected(self) -> int:
        """The expected_votes this node puts in its heartbeats."""
        return self._status.expected_votes

    @property
    def expected_set(self) -> ExpectedSet | None:
        """The newest override this node applied, for its heartbeats (None: never one)."""
        return self._set

    def update(self, inp: QuorumInput, now: float) -> list[QuorumChange]:
        """Recompute for an installed view and its members' reports; changes only."""
        view = (inp.view_key, inp.members)
        if view != self._view:
            old = self._view[1] if self._view is not None else frozenset()
            if self._view is not None and inp.members != old:
                self._previous = old
            if inp.members != old:
                self._lms_arm(old, inp.members, now)
            self._view = view
        self._inp = inp
        self._known |= inp.members
        self._merge_expected()
        return self._settle(now)

    def set_expected(self, value: int | None, now: float) -> list[QuorumChange]:
        """The operator's `expected N` (None = `reset`: the configured expected votes): refused
        with a reason, or applied here and published as `expected_set` for the view."""
        target = self._configured_expected() if value is None else value
        refusal = self._refusal(target)
        if refusal:
            return [ExpectedRefused(target, refusal)]
        generation = (self._set.generation if self._set else 0) + 1
        self._set = ExpectedSet(generation, self._id, target, self._inp.view_key)
        what = "reset to the configured" if value is None else "set"
        return self._apply(target, f"operator {what} expected votes {target}", now)

    def receive_expected_set(
        self, sent: ExpectedSet, sender: int, now: float
    ) -> list[QuorumChange]:
        """A member's heartbeat carries `sent`: apply it once if it is newer than ours, was made
        in our installed view and passes the same checks here; else nothing (or a refusal)."""
        inp = self._inp
        if sender not in inp.members or sent.ring != inp.view_key:
            return []
        if not 0 < sent.generation < MAX_EXPECTED_VOTES:
            return []  # out of range: a buggy or hostile peer; no generation can follow it
        if self._set is not None and sent.key <= self._set.key:
            return []
        self._set = sent  # seen: not re-checked on every heartbeat
        refusal = self._refusal(sent.value)
        if refusal:
            return [ExpectedRefused(sent.value, f"node {sent.origin}'s override: {refusal}")]
        return self._apply(sent.value, f"node {sent.origin} set expected votes {sent.value}", now)

    def reconfigure(
        self,
        configured_votes: Mapping[int, int],
        now: float,
        *,
        options: QuorumOptions | None = None,
        qdevice_votes: int | None = None,
        transition_until: float | None = None,
        jump: str = "",
        inp: QuorumInput | None = None,
    ) -> list[QuorumChange]:
        """The configured nodes or votes changed (`delnode`, a reload): expected votes become the
        new configured value or the votes present, whichever is higher, also when lower.

        `options`: the new quorum options (`runtime_options` applied: the caller keeps the ones
        that need a restart); `qdevice_votes`: the new configured device votes. With
        `transition_until`, the configuration replaced stays a constraint until then; `jump`
        (why) makes that constraint unsatisfiable (design §3.9, "Safety across a change").
        `inp`: what is counted under the new configuration (the same view: removed members gone,
        votes as the new configuration gives them)."""
        if transition_until is not None:
            self._constraints.append(self._constraint(transition_until, jump))
        if options is not None:
            self._opts = options
            if not options.effective_wait_for_all:
                self._waiting = False  # a change can end a wait, never start one
        if qdevice_votes is not None:
            self._device_configured = 0 if self._device_disabled() else max(0, qdevice_votes)
        if inp is not None:
            self._inp = inp
        self._configure(configured_votes)
        self._known = set(self._configured) | set(self._inp.members)
        target = max(self._configured_expected(), self._total())
        self._ignore_upto = max(self._ignore_upto, self._expected)
        if target != self._expected:
            self._cause = f"configuration changed: {len(self._configured)} nodes"
        self._expected = target
        return self._settle(now)

    def disable(self, reason: str, now: float) -> list[QuorumChange]:
        """Quorum off for good (this node was removed from the configuration): `reason` is the
        verdict's reason from now on."""
        self._disabled = reason
        return self._settle(now)

    def _constraint(self, until: float, jump: str) -> _Constraint:
        """The configuration in force now, as a constraint until `until`."""
        listed = len(self._configured) > 1
        quorum = 0 if jump else self._status.quorum
        label = jump or f"the previous configuration's {self._status.expected_votes} expected votes"
        return _Constraint(
            until, dict(self._configured), listed, self._device_configured, quorum, label
        )

    def _transition_refusal(self) -> str:
        """Why a constraint denies quorum now ("" = none does)."""
        inp = self._inp
        for c in self._constraints:
            if c.until <= self._now:
                continue
            if not c.quorum:
                return f"configuration change: {c.label}; not quorate until the change settles"
            have = min(self._device_votes(), c.device)
            for m in inp.members:
                if m in c.votes:
                    have += c.votes[m]
                elif not c.listed:
                    have += max(0, inp.member_votes.get(m, 1))
            if have < c.quorum:
                return (
                    f"configuration change: the counted members hold {have} of {c.label} "
                    f"(need {c.quorum}) until the change settles"
                )
        return ""

    def proposed(self, ring: tuple[int, int], members: frozenset[int]) -> None:
        """This node is sending a proposal: if it holds a majority of the votes, other nodes may
        install it, so a tie-breaker from an older view is no longer safe to name."""
        cached = self._proposed_votes
        if cached is not None and cached[0] is members and cached[1] is self._configured:
            votes = cached[2]  # asked once per heartbeat round, mostly for the same proposal
        else:
            votes = sum(self._configured.get(m, 1) for m in members)
            self._proposed_votes = (members, self._configured, votes)
        if votes >= self._expected // 2 + 1:
            self._tie_high = max(self._tie_high, _order(ring))

    def tick(self, now: float) -> list[QuorumChange]:
        """Let time pass: the last_man_standing window may have expired."""
        return self._settle(now)

    def next_deadline(self) -> float | None:
        """When `tick` may next change something (the LMS window end, the end of a
        configuration transition), else None."""
        lms = self._lms_due if self._lms_due is not None and self._lms_possible() else None
        if not self._constraints:  # the common case, asked once per wake-up: no list built
            return lms
        times = [c.until for c in self._constraints]
        if lms is not None:
            times.append(lms)
        return min(times)

    # -- votes and expected votes -----------------------------------------------------------

    def _device_disabled(self) -> bool:
        """votequorum(5): with last_man_standing or auto_tie_breaker the device is disabled."""
        return self._opts.last_man_standing or self._opts.auto_tie_breaker

    def _device_votes(self) -> int:
        return 0 if self._device_disabled() else max(0, self._inp.qdevice_votes)

    def _node_votes(self) -> int:
        inp, configured = self._inp, self._configured
        cached = self._node_votes_of
        if cached is not None and cached[0] is inp and cached[1] is configured:
            return cached[2]  # the same (frozen) input: asked several times per update
        votes = inp.member_votes
        total = sum(max(0, votes.get(m, configured.get(m, 1))) for m in inp.members)
        self._node_votes_of = (inp, configured, total)
        return total

    def _total(self) -> int:
        return self._node_votes() + self._device_votes()

    def _refusal(self, value: int) -> str:
        """Why `expected value` is refused here ("" = accepted), as corosync's setexpected."""
        total = self._total()
        if not 1 <= value <= MAX_EXPECTED_VOTES:
            return f"expected votes must be between 1 and {MAX_EXPECTED_VOTES}"
        if not self._inp.members:
            return "no view installed yet"
        if value < total:
            return f"{value} is below the {total} votes present; use at least {total}"
        quorum = 1 if self._two_node_active(value) else value // 2 + 1
        if self._status.quorate and quorum > total:
            return (
                f"the partition is quorate and {value} would need {quorum} votes but only "
                f"{total} are present; use at most {2 * total - 1}"
            )
        return ""

    def _apply(self, value: int, cause: str, now: float) -> list[QuorumChange]:
        self._ignore_upto = max(self._ignore_upto, self._expected)
        self._expected, self._cause = value, cause
        self._merge_expected()
        return self._settle(now)

    def _merge_expected(self) -> None:
        """Members' reports (quorate, settled, current ones only) and the votes present."""
        inp = self._inp
        current = self._set is not None and self._set.ring == inp.view_key
        newest = self._set.key if self._set is not None and current else (0, 0)
        reports = [
            (v, m)
            for m, v in inp.member_expected.items()
            if m in inp.members
            and m != self._id
            and m in inp.quorate_members
            and v > 0
            and inp.member_set_keys.get(m, (0, 0)) >= newest
        ]
        best, who = max(reports, default=(0, 0))
        settled = self._status.quorate and "WaitForAllStatus" not in self._status.flags
        stale = self._expected < best <= self._ignore_upto  # the total before a drop
        if best and not settled and best != self._expected and not stale:
            # corosync: an inquorate node takes a quorate member's expected votes, also lower
            self._expected, self._cause = best, f"quorate node {who} has expected votes {best}"
        elif best > max(self._expected, self._ignore_upto):
            self._expected, self._cause = best, f"node {who} reports expected votes {best}"
        total = self._total()
        if total > self._expected:
            self._expected, self._cause = total, f"{total} votes present exceed expected votes"

    # -- last_man_standing ------------------------------------------------------------------

    def _lms_possible(self) -> bool:
        return self._opts.last_man_standing and bool(self._inp.members)

    def _lms_arm(self, old: frozenset[int], new: frozenset[int], now: float) -> None:
        """corosync's votequorum_sync_init: (re)start the window when members left and at least
        quorum nodes remain, or (auto_tie_breaker) when at most quorum remain with the lowest id
        of the last quorate view; a join neither starts nor stops it."""
        if not self._opts.last_man_standing:
            return
        quorum = self._status.quorum  # of the view before this one, as in corosync
        tie = self._opts.auto_tie_breaker and bool(self._tie_members)
        holds_lowest = tie and min(self._tie_members) in new
        if (len(new) >= quorum and old - new) or (len(new) <= quorum and holds_lowest):
            self._lms_due = now + self._opts.last_man_standing_window

    def _apply_lms(self, now: float) -> None:
        """Drop expected to the votes present once the window ended, if quorate."""
        window = self._opts.last_man_standing_window
        if not self._lms_possible() or self._lms_due is None or now < self._lms_due:
            return
        self._lms_due = None
        if not self._status.quorate:
            return
        floor = LMS_FLOOR_WITH_ATB if self._opts.auto_tie_breaker else LMS_FLOOR
        target = max(self._total(), floor)
        if target < self._expected:
            self._ignore_upto = max(self._ignore_upto, self._expected)
            self._expected = target
            self._cause = (
                f"last_man_standing: {window:g} s since members left, view "
                f"{self._view_key_text()} with {self._total()} votes"
            )

    def _view_key_text(self) -> str:
        rep, seq = self._inp.view_key
        return f"{rep}/{seq}"

    # -- the verdict ------------------------------------------------------------------------

    def _settle(self, now: float) -> list[QuorumChange]:
        """Re-evaluate (twice if last_man_standing moved expected) and report the changes."""
        old = self._status
        self._now = now
        self._constraints = [c for c in self._constraints if c.until > now]
        self._end_wait_for_all()
        self._status = self._evaluate()
        self._apply_lms(now)
        self._end_wait_for_all()
        self._status = self._evaluate()
        status = self._status
        if status.quorate and status.total_votes >= status.quorum:
            self._tie_members = self._inp.members  # corosync's get_lowest/highest_node_id
            self._tie_ring = self._inp.view_key
            self._tie_high = max(self._tie_high, _order(self._tie_ring))
        cause, self._cause = self._cause or "the votes present changed", ""
        return _changes(old, self._status, cause)

    def _two_node_active(self, expected: int) -> bool:
        return self._opts.two_node and expected == 2 and len(self._known) <= 2

    def _end_wait_for_all(self) -> None:
        """wait_for_all ends once the votes present reach expected votes, or all configured
        nodes (and votes) were present together, or this node joins members that are quorate
        and no longer waiting."""
        inp = self._inp
        if not self._waiting or not inp.members:
            return
        if self._total() >= self._expected:
            self._waiting = False
        if set(self._configured) <= inp.members and self._node_votes() >= self._wfa_votes:
            self._waiting = False
        if inp.quorate_members & (inp.members - {self._id}):
            self._waiting = False

    def _evaluate(self) -> QuorumStatus:
        expected, total = self._expected, self._total()
        two_node = self._two_node_active(expected)
        quorum = 1 if two_node else expected // 2 + 1
        flags = self._option_flags(two_node)
        if self._disabled:
            return QuorumStatus(False, expected, total, quorum, flags, self._disabled)
        if not self._inp.members:
            return QuorumStatus(False, expected, total, quorum, flags, "no view installed yet")
        if self._waiting:
            missing = sorted(set(self._configured) - self._inp.members)
            why = f"wait_for_all: not all nodes seen together yet (missing: {missing or 'votes'})"
            return QuorumStatus(False, expected, total, quorum, flags | {"WaitForAllStatus"}, why)
        status = QuorumStatus(False, expected, total, quorum, flags, "")
        status = _with_verdict(status, self._tie_breaker(expected, total, quorum))
        refusal = self._transition_refusal() if status.quorate else ""
        if refusal:
            return replace(status, quorate=False, flags=status.flags - {"Quorate"}, reason=refusal)
        return status

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

    @property
    def tie_breaker(self) -> int:
        """This node's tie-breaker node (0 = none yet), for its heartbeats: the lowest /
        highest / first listed member of the last view in which it was quorate by votes."""
        members = self._tie_members
        if not self._opts.auto_tie_breaker or not members:
            return 0
        if self._tie_high != _order(self._tie_ring):
            return 0  # a later majority may have been installed without us: no safe choice
        mode = self._opts.auto_tie_breaker_node
        if mode is TieBreaker.LOWEST:
            return min(members)
        if mode is TieBreaker.HIGHEST:
            return max(members)
        return next((n for n in self._opts.tie_breaker_nodes if n in members), 0)

    def _tie_breaker(self, expected: int, total: int, quorum: int) -> tuple[bool, str] | None:
        """(quorate, why) when auto_tie_breaker decides (an even split), else None."""
        if not self._opts.auto_tie_breaker or total * 2 != expected or total >= quorum:
            return None
        members = self._inp.members
        half = f"exactly half the votes ({total} of {expected})"
        if len(self._previous) - len(members) >= quorum:
            return False, (
                f"{half} but {len(self._previous)} members were in the previous view: the "
                "other part may be quorate"
            )
        node = self.tie_breaker
        if not node:
            why = "not quorate by votes yet" if not self._tie_members else "a later majority"
            return False, f"{half} and no tie-breaker node known ({why})"
        reports = self._inp.member_tie_breakers
        others = sorted(m for m in members - {self._id} if reports.get(m, 0) != node)
        if others:
            return False, (
                f"{half} but members {others} do not name tie-breaker node {node}: their last "
                "quorate views differ"
            )
        holds = node in members
        where = "holds" if holds else "does not hold"
        return holds, f"{half} and this partition {where} tie-breaker node {node}"


def _order(ring: tuple[int, int]) -> tuple[int, int]:
    """Ring ids ordered by sequence, then representative."""
    rep, seq = ring
    return (seq, rep)


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
