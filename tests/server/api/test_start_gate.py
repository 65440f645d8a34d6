"""The live start gate (server/api/start_gate.py): at most ``slots`` sessions in their start-up
at once, each slot freed after its start-up blocks or when the session ends."""

from __future__ import annotations

import asyncio

import pytest

from distill_serve.server.api.start_gate import StartGate


async def _entered(gate: StartGate, blocks: int) -> asyncio.Task:  # type: ignore[type-arg]
    task = asyncio.create_task(gate.enter(blocks))
    await asyncio.sleep(0)  # let it run up to its wait
    return task


async def test_a_session_waits_for_a_slot_until_one_finishes_its_start_up() -> None:
    gate = StartGate(1)
    first = await gate.enter(2)
    second = await _entered(gate, 3)
    assert not second.done() and gate.waiting == 1
    first.block_sent()
    await asyncio.sleep(0)
    assert not second.done()  # one start-up block is still to come
    first.block_sent()
    ticket = await asyncio.wait_for(second, 1)
    assert gate.waiting == 0 and ticket.holding and not first.holding
    first.block_sent()  # later blocks free nothing more
    third = await _entered(gate, 1)
    assert not third.done()
    ticket.close()  # the session ended in its start-up: its slot is free at once
    (await asyncio.wait_for(third, 1)).close()
    ticket.close()  # idempotent
    again = await asyncio.wait_for(gate.enter(1), 1)  # one slot, free again
    again.close()


async def test_sessions_without_start_up_never_wait() -> None:
    gate = StartGate(1)
    held = await gate.enter(1)
    free = await asyncio.wait_for(gate.enter(0), 1)  # the block path: nothing costly
    assert not free.holding and held.holding
    held.close()


async def test_a_cancelled_wait_takes_no_slot() -> None:
    gate = StartGate(1)
    held = await gate.enter(1)
    waiter = await _entered(gate, 1)
    waiter.cancel()  # the client left while waiting
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    held.close()
    (await asyncio.wait_for(gate.enter(1), 1)).close()


def test_a_gate_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        StartGate(0)
