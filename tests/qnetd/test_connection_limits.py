"""The connection guard and the failed-attempt limiter, as pure state machines."""

from __future__ import annotations

from proto.connection_limits import AttemptLimiter
from qnetd.connection_limits import ConnectionGuard, ConnectionLimits, LogLimiter, source_key


def test_source_key_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::9")
    assert source_key("2001:db8:1:2::1") != source_key("2001:db8:1:3::1")
    assert source_key("fe80::1%eth0") == "fe80::/64"


def test_per_source_and_total_limits_with_eviction_by_age() -> None:
    guard = ConnectionGuard(ConnectionLimits(per_source=2, total=3, evict_after=1.0))
    assert guard.admit(1, "10.0.0.1", 0.0).admitted
    assert guard.admit(2, "10.0.0.1", 0.0).admitted
    assert guard.admit(3, "10.0.0.1", 0.0).reason == "per_source"
    assert guard.admit(4, "10.0.0.2", 0.5).admitted
    assert guard.admit(5, "10.0.0.3", 0.6).reason == "total"  # the oldest is too young
    verdict = guard.admit(6, "10.0.0.3", 1.2)
    assert (verdict.admitted, verdict.evicted) == (True, (1,))
    assert guard.admit(7, "10.0.0.1", 1.3).evicted == (2,)  # 10.0.0.1 has a free slot again
    assert guard.admit(8, "10.0.0.4", 1.4).reason == "total"  # 4 is only 0.9 s old
    assert dict(guard.refused) == {"per_source": 1, "total": 2, "evicted": 2}


def test_established_connections_leave_the_pending_set_and_count_against_fds() -> None:
    guard = ConnectionGuard(ConnectionLimits(per_source=5, total=5, fd_budget=2))
    assert guard.admit(1, "10.0.0.1", 0.0).admitted
    guard.established(1)
    assert guard.next_deadline() is None
    assert guard.admit(2, "10.0.0.1", 0.0).admitted
    assert guard.admit(3, "10.0.0.2", 0.5).reason == "fd_headroom"
    assert guard.admit(4, "10.0.0.2", 2.0).evicted == (2,)  # never the established one
    guard.closed(1)
    assert guard.admit(5, "10.0.0.2", 2.0).admitted


def test_deadline_expires_in_accept_order() -> None:
    guard = ConnectionGuard(ConnectionLimits(deadline=5.0))
    for conn, at in ((1, 0.0), (2, 1.0), (3, 2.0)):
        guard.admit(conn, "10.0.0.1", at)
    guard.established(2)
    assert guard.next_deadline() == 5.0
    assert guard.expired(6.5) == [1]
    assert guard.next_deadline() == 7.0
    assert guard.expired(7.0) == [3]
    assert guard.refused["deadline"] == 2
    assert not guard.per_source


def test_attempt_limiter_burst_then_refill() -> None:
    limiter = AttemptLimiter(burst=3, per_second=0.5)
    for _ in range(3):
        assert limiter.allowed("a", 0.0)
        limiter.failed("a", 0.0)
    assert not limiter.allowed("a", 0.0)
    assert limiter.allowed("b", 0.0)
    assert limiter.retry_after("a", 0.0) == 2.0
    assert limiter.allowed("a", 2.0)


def test_attempt_limiter_table_is_bounded() -> None:
    limiter = AttemptLimiter(burst=1, per_second=0.001, max_sources=2)
    for source in ("a", "b", "c"):
        limiter.failed(source, 0.0)
    assert limiter.allowed("a", 0.0)  # forgotten: the least recently failed
    assert not limiter.allowed("c", 0.0)


def test_log_limiter_one_line_per_interval_with_held_count() -> None:
    quiet = LogLimiter(interval=10.0)
    assert quiet.allow("x", 0.0) == 0
    assert quiet.allow("x", 1.0) is None
    assert quiet.allow("x", 2.0) is None
    assert quiet.allow("y", 2.0) == 0
    assert quiet.allow("x", 10.5) == 2
