"""Limits on connections not authenticated yet: deadline, per-source and total limits, fd headroom;
and on failed secret guesses per source (`AttemptLimiter`).

Not the admission rules of who may join which cluster (those are the core's). Shared by both
daemons (qnetd's listeners and enrollment, the agent's join listener): pure, `now` passed in.

Sans-IO: the adapter (`qnetd/runtime/server.py`, `qnetd/runtime/enroll_server.py`,
`agent/runtime/join.py`) asks
`admit(conn, source, now)` on every accepted TCP connection, calls `established(conn)` when it
completes its authentication phase (INIT accepted; for enrollment never), `closed(conn)` when it
ends, and `expired(now)` at `next_deadline()`. Every refusal is counted in `refused` by reason:

    per_source   the source already has `per_source` unauthenticated connections (refused)
    total        `total` unauthenticated connections are open and none is old enough to evict
    fd_headroom  the process is at its file-descriptor budget and none is old enough to evict
    deadline     an unauthenticated connection did not finish in `deadline` seconds (dropped)
    evicted      dropped, the oldest unauthenticated one, to make room for a new connection

Invariants: an established connection is never dropped by this guard; at most `total` pending and
at most `per_source` pending per source at any time; pending + established never exceeds
`fd_budget` (when known); a pending connection is gone by `deadline` seconds after its accept.
Because every pending connection has the same deadline, insertion order is deadline order and the
oldest pending connection is the first one in `self.pending`.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field

REASONS = ("per_source", "total", "fd_headroom", "deadline", "evicted")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Limits of one listener's unauthenticated phase."""

    deadline: float = 5.0
    """Seconds from accept until the connection must be established."""
    per_source: int = 16
    """Pending connections per source address (IPv6: per /64)."""
    total: int = 1024
    """Pending connections in all."""
    fd_budget: int | None = None
    """Connections (pending + established) the process can hold; None = not limited here."""
    evict_after: float = 1.0
    """When full, the oldest pending connection is dropped for a new one once it is this old."""

    def validate(self) -> None:
        """Raise ValueError with a one-line fix for an impossible limit."""
        if not 0.1 <= self.deadline <= 3600:
            raise ValueError("--preinit-timeout must be between 0.1 and 3600 seconds")
        if not 1 <= self.per_source <= self.total:
            raise ValueError("need 1 <= --preinit-per-source <= --preinit-max")
        if self.fd_budget is not None and self.fd_budget < 1:
            raise ValueError("no file descriptors left for connections; raise the open-file limit")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one accepted connection."""

    admitted: bool
    reason: str | None = None
    """Why it was refused (a `REASONS` label)."""
    evicted: tuple[int, ...] = ()
    """Older pending connections to drop now (counted as `evicted`)."""


def source_key(address: str) -> str:
    """The unit a per-source limit counts: the IP address (IPv4-mapped as IPv4), IPv6 per /64."""
    if ":" not in address:  # IPv4 as accept() gives it: the text is the key
        return address
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class ConnectionGuard:
    """Tracks pending (unauthenticated) and established connections of one listener."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.pending: dict[int, tuple[str, float]] = {}
        """conn -> (source key, accepted at), in accept order."""
        self.per_source: Counter[str] = Counter()
        self.established_ids: set[int] = set()
        self.refused: Counter[str] = Counter()

    def admit(self, conn: int, address: str, now: float) -> Verdict:
        """Decide on a just-accepted connection from `address` (an IP address text)."""
        source = source_key(address)
        if self.per_source[source] >= self.limits.per_source:
            self.refused["per_source"] += 1
            return Verdict(False, "per_source")
        evicted: list[int] = []
        budget = self.limits.fd_budget
        full = budget is not None and len(self.pending) + len(self.established_ids) >= budget
        if full and not self._evict_oldest(now, evicted):
            self.refused["fd_headroom"] += 1
            return Verdict(False, "fd_headroom")
        if len(self.pending) >= self.limits.total and not self._evict_oldest(now, evicted):
            self.refused["total"] += 1
            return Verdict(False, "total", tuple(evicted))
        self.pending[conn] = (source, now)
        self.per_source[source] += 1
        return Verdict(True, None, tuple(evicted))

    def _evict_oldest(self, now: float, out: list[int]) -> bool:
        oldest = next(iter(self.pending.items()), None)
        if oldest is None or now - oldest[1][1] < self.limits.evict_after:
            return False
        self._forget(oldest[0])
        self.refused["evicted"] += 1
        out.append(oldest[0])
        return True

    def established(self, conn: int) -> None:
        """The connection authenticated (INIT accepted): no deadline, no pending slot any more."""
        if conn in self.pending:
            self._forget(conn)
            self.established_ids.add(conn)

    def closed(self, conn: int) -> None:
        """The connection ended, for whatever reason (no effect if already forgotten)."""
        self._forget(conn)
        self.established_ids.discard(conn)

    def pending_from_source(self, conn: int) -> int:
        """Unauthenticated connections open from `conn`'s source (0 if `conn` is not pending)."""
        entry = self.pending.get(conn)
        return 0 if entry is None else self.per_source[entry[0]]

    def expired(self, now: float) -> list[int]:
        """Pending connections past their deadline, forgotten and counted to drop."""
        due = []
        for conn, (_, accepted) in self.pending.items():
            if accepted + self.limits.deadline > now:
                break
            due.append(conn)
        for conn in due:
            self._forget(conn)
        self.refused["deadline"] += len(due)
        return due

    def next_deadline(self) -> float | None:
        """When the oldest pending connection times out."""
        oldest = next(iter(self.pending.values()), None)
        return None if oldest is None else oldest[1] + self.limits.deadline

    def compact(self) -> None:
        """Rebuild the tables at their present size: a dict or set keeps the size it had at its
        fullest until rebuilt (a flood of 2,000 pending connections: ~0.2 MB, and slower
        iteration from the oldest entry)."""
        self.pending = dict(self.pending)
        self.per_source = Counter(self.per_source)
        self.established_ids = set(self.established_ids)

    def _forget(self, conn: int) -> None:
        entry = self.pending.pop(conn, None)
        if entry is not None:
            self.per_source[entry[0]] -= 1
            if self.per_source[entry[0]] <= 0:
                del self.per_source[entry[0]]


class LogLimiter:
    """At most one log line per key every `interval` seconds; says how many it held back."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def allow(self, key: str, now: float) -> int | None:
        """None: stay quiet; else log now, with the returned count of lines suppressed since."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] += 1
            return None
        if len(self._last) > 4096:
            self._last.clear()
        self._last[key] = now
        return self._held.pop(key, 0)


@dataclass
class AttemptLimiter:
    """Failed attempts (enrollment or join tokens) per source: a token bucket of `burst`,
    refilled at `per_second`.

    A source whose bucket is empty is refused before its token is even looked at. The table is
    bounded: beyond `max_sources`, the least recently failed sources are forgotten.
    """

    burst: float = 10.0
    per_second: float = 0.1
    max_sources: int = 4096
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    """source -> (tokens left, at), least recently failed first."""

    def _level(self, source: str, now: float) -> float:
        tokens, at = self._buckets.get(source, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - at) * self.per_second)

    def allowed(self, source: str, now: float) -> bool:
        """May this source try a token now?"""
        return self._level(source, now) >= 1.0

    def failed(self, source: str, now: float) -> None:
        """Charge one failed attempt to `source`."""
        level = self._level(source, now) - 1.0
        self._buckets.pop(source, None)
        self._buckets[source] = (max(0.0, level), now)
        while len(self._buckets) > self.max_sources:
            del self._buckets[next(iter(self._buckets))]

    def retry_after(self, source: str, now: float) -> float:
        """Seconds until `source` may try again (0 when it may now)."""
        return max(0.0, (1.0 - self._level(source, now)) / self.per_second)
