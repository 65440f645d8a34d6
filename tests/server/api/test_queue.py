"""The admission queue (server/api/queue.py): a freed slot goes to the request that waited
longest (never to one that comes after it), clients with fewer generations first; a bounded
number wait, each for a bounded time."""

from __future__ import annotations

import asyncio

import pytest

from distill_serve.server.api.queue import AdmissionQueue, QueueFull, WaitedTooLong


class Slots:
    def __init__(self, n: int) -> None:
        self.free = n

    def fits(self) -> bool:
        return self.free > 0


async def _enter(q: AdmissionQueue, slots: Slots, client: str, log: list[str]) -> None:
    await q.turn("m", client, slots.fits)
    slots.free -= 1
    q.taken(client)
    log.append(client)


def test_a_freed_slot_goes_to_the_longest_waiter_not_to_a_newcomer() -> None:
    async def scenario() -> list[str]:
        q, slots, log = AdmissionQueue(8, 5.0), Slots(1), []
        await _enter(q, slots, "a", log)  # a runs
        waiting = [asyncio.create_task(_enter(q, slots, c, log)) for c in ("b", "c")]
        await asyncio.sleep(0.01)
        slots.free += 1  # a ends ...
        q.done("a")
        again = asyncio.create_task(_enter(q, slots, "a", log))  # ... and asks again at once
        await asyncio.sleep(0.01)
        for expected in ("c", "a"):
            slots.free += 1
            q.done(log[-1])
            await asyncio.sleep(0.01)
            assert log[-1] == expected
        await asyncio.gather(*waiting, again)
        return log

    assert asyncio.run(scenario()) == ["a", "b", "c", "a"]


def test_clients_with_fewer_generations_go_first() -> None:
    async def scenario() -> list[str]:
        q, slots, log = AdmissionQueue(8, 5.0), Slots(2), []
        await _enter(q, slots, "greedy", log)
        await _enter(q, slots, "greedy", log)  # greedy holds both slots
        more = asyncio.create_task(_enter(q, slots, "greedy", log))  # and waits for a third
        await asyncio.sleep(0.01)
        other = asyncio.create_task(_enter(q, slots, "modest", log))
        await asyncio.sleep(0.01)
        slots.free += 1
        q.done("greedy")
        await asyncio.sleep(0.01)
        more.cancel()
        await asyncio.gather(other, more, return_exceptions=True)
        return log

    assert asyncio.run(scenario())[-1] == "modest"


def test_the_queue_is_bounded_in_length_and_in_time() -> None:
    async def scenario() -> None:
        q, slots = AdmissionQueue(1, 0.2), Slots(0)
        first = asyncio.create_task(q.turn("m", "a", slots.fits))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await q.turn("m", "b", slots.fits)
        with pytest.raises(WaitedTooLong):
            await first
        assert q.waiting("m") == 0
        with pytest.raises(QueueFull):  # max_waiting 0: refuse at once when busy
            await AdmissionQueue(0, 5.0).turn("m", "a", slots.fits)

    asyncio.run(scenario())


def test_a_waiter_that_leaves_passes_its_turn_on() -> None:
    async def scenario() -> list[str]:
        q, slots, log = AdmissionQueue(8, 5.0), Slots(1), []
        await _enter(q, slots, "a", log)
        gone = asyncio.create_task(_enter(q, slots, "b", log))
        stays = asyncio.create_task(_enter(q, slots, "c", log))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        slots.free += 1
        q.done("a")
        await stays
        return log

    assert asyncio.run(scenario()) == ["a", "c"]
