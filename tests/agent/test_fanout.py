"""The fan-out seam (design §3.13): every event once to every sink, never blocking the core;
bounded queues with counted drops; failing sinks isolated; status changes coalesced."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.runtime.fanout import FanOut, LogSink, Published, QueuedSink, RecentSink


class Collect(QueuedSink):
    """Delivers into a list; optionally slow or failing."""

    def __init__(self, name: str, capacity: int, delay: float = 0.0, fail: bool = False) -> None:
        super().__init__(capacity)
        self.name = name
        self.got: list[Published] = []
        self.statuses = 0
        self.delay, self.fail = delay, fail
        self.gate = asyncio.Event()
        self.gate.set()

    async def deliver(self, item: Published) -> None:
        await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise OSError("broker away")
        self.got.append(item)

    async def deliver_status(self) -> None:
        self.statuses += 1


def record(i: int) -> dict[str, Any]:
    return {"event": "view_installed", "reason": f"r{i}", "n": i}


@pytest.mark.asyncio
async def test_every_event_reaches_every_sink_once_in_order() -> None:
    fan = FanOut([LogSink(), recent := RecentSink(10)])
    a, b = Collect("a", 100), Collect("b", 100)
    fan.start(a)
    fan.start(b)
    for i in range(5):
        fan.publish("view_installed", record(i))
    await asyncio.sleep(0.05)
    for sink in (a, b):
        assert [p.record["n"] for p in sink.got] == [0, 1, 2, 3, 4]
        assert [p.seq for p in sink.got] == [1, 2, 3, 4, 5]
    assert [e["n"] for e in recent.events] == [0, 1, 2, 3, 4]
    assert fan.stats()["a"] == {
        "queued": 0,
        "offered": 5,
        "delivered": 5,
        "dropped": 0,
        "failed": 0,
    }
    await fan.close()


@pytest.mark.asyncio
async def test_a_stuck_sink_drops_its_oldest_and_blocks_nobody() -> None:
    fan = FanOut()
    stuck, fine = Collect("stuck", 3), Collect("fine", 100)
    stuck.gate.clear()  # its broker never answers
    fan.start(stuck)
    fan.start(fine)
    await asyncio.sleep(0.01)
    for i in range(10):
        fan.publish("quorum_lost", record(i))  # returns at once although `stuck` is blocked
    await asyncio.sleep(0.05)
    assert len(fine.got) == 10
    assert stuck.stats()["dropped"] >= 6
    assert stuck.stats()["queued"] <= 3
    stuck.gate.set()
    await asyncio.sleep(0.05)
    # it got the first event (in flight when blocked) and the newest ones: a gap in seq shows it
    seqs = [p.seq for p in stuck.got]
    assert seqs[-3:] == [8, 9, 10]
    await fan.close()


@pytest.mark.asyncio
async def test_a_failing_sink_is_counted_and_keeps_going() -> None:
    fan = FanOut()
    bad, good = Collect("bad", 10, fail=True), Collect("good", 10)
    fan.start(bad)
    fan.start(good)
    for i in range(3):
        fan.publish("peer_lost", record(i))
    await asyncio.sleep(0.05)
    assert bad.stats()["failed"] == 3
    assert bad.stats()["delivered"] == 0
    assert len(good.got) == 3
    await fan.close()


@pytest.mark.asyncio
async def test_status_changes_are_coalesced_per_loop_turn() -> None:
    fan = FanOut()
    sink = Collect("s", 100)
    fan.start(sink)
    await asyncio.sleep(0.02)
    first = sink.statuses  # the start-up status
    assert first == 1
    for i in range(50):  # one burst in one loop turn
        fan.publish("view_installed", record(i))
    await asyncio.sleep(0.05)
    assert sink.statuses == first + 1
    await fan.close()


@pytest.mark.asyncio
async def test_a_sink_whose_offer_raises_does_not_stop_the_others() -> None:
    class Broken(RecentSink):
        def offer(self, item: Published) -> None:
            raise RuntimeError("bug")

    fan = FanOut([Broken(1), recent := RecentSink(5)])
    fan.publish("stalled", record(1))
    assert fan.sink_errors == 1
    assert len(recent.events) == 1


@pytest.mark.asyncio
async def test_stop_with_grace_delivers_what_is_queued() -> None:
    fan = FanOut()
    slow = Collect("slow", 100, delay=0.01)
    fan.start(slow)
    for i in range(5):
        fan.publish("quorum_lost", record(i))
    await fan.stop("slow", grace=2.0)
    assert len(slow.got) == 5
    assert "slow" not in fan.stats()
