"""How many live sessions may be starting at once.

A live session on the streaming vocoder path costs most in its first blocks: the first feed
runs the stream's latency frames on top of the block, and on BigVGAN every block of the
replicate-padded head also runs the whole-clip graph on a window with context (the stand-in:
its first three blocks cost 0.37 CPU s together, twelve later blocks' worth). Sessions that
start together (a game level loading its ambiences) all pay that at once while each is also
filling its lookahead: on two cores, four stand-in sessions started at once had 21-34 late
blocks in 10 s, and none when started 0.5 s apart (docs/performance.md).

:class:`StartGate` lets ``slots`` sessions (one per core, as the step runners run one step per
core at a time) through their start-up blocks at once; the others wait for a slot before their
first block (with the gate: 0-3 late blocks in the same test). A wait only moves a session's
first audio later, which its listener does not hear as a gap (playback starts at the first
block); once started, no session waits again.
"""

from __future__ import annotations

import asyncio


class StartGate:
    """At most ``slots`` sessions in their start-up at once (asyncio; one event loop)."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a start gate needs at least one slot, got {slots}")
        self._free = asyncio.Semaphore(slots)
        self.waiting = 0  # sessions waiting for a slot now

    async def enter(self, blocks: int) -> StartTicket:
        """Wait for a slot, held for the session's first ``blocks`` blocks (0: none)."""
        if blocks <= 0:
            return StartTicket(self, 0)
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        return StartTicket(self, blocks)

    def _release(self) -> None:
        self._free.release()


class StartTicket:
    """A session's slot: :meth:`block_sent` after each block frees it after the last
    start-up block; :meth:`close` frees it early (the session ended). Both are idempotent
    once the slot is free."""

    def __init__(self, gate: StartGate, blocks: int) -> None:
        self._gate = gate
        self._left = blocks

    @property
    def holding(self) -> bool:
        return self._left > 0

    def block_sent(self) -> None:
        if self._left > 0:
            self._left -= 1
            if self._left == 0:
                self._gate._release()

    def close(self) -> None:
        if self._left > 0:
            self._left = 0
            self._gate._release()
