"""qnetd/runtime/handshake_gate.py: at most N TLS handshakes start per loop turn, quiet first."""

from __future__ import annotations

import asyncio

import pytest

from qnetd.runtime.handshake_gate import HandshakeGate


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _enter_all(
    gate: HandshakeGate, priorities: list[int], log: list[tuple[int, int]]
) -> None:
    loop_turn = [0]

    async def counter() -> None:
        while True:
            await asyncio.sleep(0)
            loop_turn[0] += 1

    ticker = asyncio.create_task(counter())

    async def one(i: int, priority: int) -> None:
        await gate.enter(priority)
        log.append((i, loop_turn[0]))

    await asyncio.gather(*(one(i, p) for i, p in enumerate(priorities)))
    ticker.cancel()


@pytest.mark.asyncio
async def test_at_most_per_turn_start_in_one_turn() -> None:
    """Ten handshakes asked for in one turn with a budget of 3: they start 3 + 3 + 3 + 1 over
    four turns, never more than 3 in one; 7 are counted as delayed."""
    gate = HandshakeGate(per_turn=3)
    log: list[tuple[int, int]] = []
    await _enter_all(gate, [0] * 10, log)
    per_turn: dict[int, int] = {}
    for _, turn in log:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    assert max(per_turn.values()) <= 3
    assert sorted(per_turn.values()) == [1, 3, 3, 3]
    assert gate.delayed == 7
    assert gate.waiting == 0


@pytest.mark.asyncio
async def test_a_quiet_source_goes_before_a_flooding_one() -> None:
    """Waiters from a source with 12 pending connections queue first, then one whose source
    has 1: it starts in the first turn with a free slot, ahead of the flood (FIFO within a
    priority)."""
    gate = HandshakeGate(per_turn=2)
    log: list[tuple[int, int]] = []
    await _enter_all(gate, [12] * 8 + [1], log)
    order = [i for i, _ in log]
    assert order[:2] == [0, 1]  # the budget of the first turn, before anyone waits
    assert order[2] == 8  # the quiet one, first of the waiters
    assert order[3:] == [2, 3, 4, 5, 6, 7]


@pytest.mark.asyncio
async def test_cancelled_waiters_leave_no_rows_behind() -> None:
    """1,000 waiters cancelled (their connections dropped at the pre-INIT deadline) leave the
    gate empty: no waiting count, queue rows compacted to at most 16, the next one starts."""
    gate = HandshakeGate(per_turn=1)
    await gate.enter()  # uses this turn's budget: the rest wait
    tasks = [asyncio.create_task(gate.enter(5)) for _ in range(1000)]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert gate.waiting == 0
    assert sum(len(q) for q in gate._queues) <= 16
    await asyncio.wait_for(gate.enter(), 1.0)
    await _turns(3)
