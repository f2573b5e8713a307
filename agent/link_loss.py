"""Loss estimate of one periodic datagram stream from arrival times alone (no sequence numbers).

Owns the estimator used by `agent.links`; pure arithmetic, no clock. The datagram layer already
drops replayed duplicates (`proto.datagram_seal`), so this only has to stay robust, not exact.

Estimator, over a sliding window of the last WINDOW_INTERVALS intervals:

* Each arrival at least half an interval after the previous *counted* one is counted, and the
  gap before it says how many datagrams went missing: `round(gap / interval) - 1` (re-anchored
  on every arrival, so timer drift and jitter below half an interval never count as loss).
* An arrival less than half an interval after the previous counted one is an *extra*: a
  duplicate or a reordered (late) datagram. Each extra cancels one hole, so reordering does not
  inflate the estimate and duplicates can only lower it.
* The silence since the last arrival counts its overdue datagrams as holes too, so a dead
  stream converges to 1.0.

`loss = max(0, holes - extras) / (counted + holes)`, holes clipped to the window. A link that
carries two streams (the peer's probes and its replies to ours) is measured as their union:
a slot is lost only when both lost it, an underestimate by design.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW_INTERVALS = 32  # long enough for 1/32 resolution, short enough to follow a change


def missed(gap: float, interval: float) -> int:
    """Datagrams that should have arrived inside a silence of `gap` seconds: round(gap/i) - 1."""
    return max(0, math.floor(gap / interval + 0.5) - 1)


@dataclass(slots=True)
class LossMeter:
    """Sliding-window loss of one link's incoming datagrams."""

    interval: float = 0.0
    last: float | None = None
    marks: deque[tuple[float, int, bool]] = field(default_factory=deque)
    """(arrival time, holes before it, is an extra) for arrivals inside the window."""
    counted: int = 0
    """Marks in the window that are not extras (kept with `marks`, so `loss` need not count)."""
    extras: int = 0
    """Marks in the window that are extras."""
    holey: deque[tuple[float, int]] = field(default_factory=deque)
    """(arrival time, holes before it) of the counted marks with holes before them: the only
    ones `loss` has to look at one by one (none at no loss, a few at 20 %)."""

    def arrive(self, now: float, interval: float) -> None:
        """One datagram at `now`; `interval` is the sender's cadence for it."""
        if interval <= 0:
            return
        if self.last is None:
            self.interval, self.last = interval, now
            self.marks.append((now, 0, False))
            self.counted += 1
            return
        gap = now - self.last
        # max(self.interval, interval): a cadence change never counts the switch as loss
        step = self.interval if self.interval > interval else interval
        self.interval = interval
        if gap < step / 2:
            self.marks.append((now, 0, True))
            self.extras += 1
        else:
            self.last = now
            holes = int(gap / step + 0.5) - 1  # missed(gap, step): gap / step >= 1/2 here
            self.marks.append((now, holes, False))
            self.counted += 1
            if holes:
                self.holey.append((now, holes))
        if self.marks[0][0] < now - WINDOW_INTERVALS * interval:
            self._trim(now)

    def loss(self, now: float, outage: int | None = None) -> float:
        """Fraction of the window's expected datagrams that did not arrive (1.0: never heard).

        With `outage`, a silence of at least that many missing datagrams (one the failure
        timeout would have declared dead: a cut, a crash, a healed partition) counts as no
        loss, so random loss is measured apart from outages."""
        if self.last is None:
            return 1.0
        self._trim(now)
        start = now - self.window()
        holes = min(missed(now - self.last, self.interval), WINDOW_INTERVALS)
        for at, before in self.holey:
            if outage is None or before < outage:  # else an outage, not loss
                holes += min(before, max(0, math.floor((at - start) / self.interval)))
        total = self.counted + holes
        return 0.0 if total == 0 else max(0, holes - self.extras) / total

    def window(self) -> float:
        """The window's length in seconds."""
        return WINDOW_INTERVALS * self.interval

    def _trim(self, now: float) -> None:
        start = now - self.window()
        marks = self.marks
        while marks and marks[0][0] < start:
            if marks.popleft()[2]:
                self.extras -= 1
            else:
                self.counted -= 1
        holey = self.holey
        while holey and holey[0][0] < start:
            holey.popleft()
