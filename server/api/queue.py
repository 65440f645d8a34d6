"""The admission queue: a generation that finds every slot taken waits its turn.

Without a queue, a slot freed by a client that asks again at once went to that same client,
and clients that obeyed the retry hint could starve (issue 40's probe: 8 looping clients,
three served never). Here a freed slot is handed to a waiting request, never to one that
arrives after it: the waiters are served first-come first-served, except that among the
waiters that fit, one whose client runs fewer generations goes first (clients are told apart
by their token, else their address). A request waits at most ``max_wait_s``, and at most
``max_waiting`` wait per model; beyond either it is refused (RESOURCE_EXHAUSTED with a retry
hint), as it is at once when ``max_waiting`` is 0.

Everything here runs on the server's event loop: no lock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


class QueueFull(Exception):
    """Too many requests wait for this model already."""


class WaitedTooLong(Exception):
    """No slot came free within the wait."""


@dataclass(eq=False)
class _Waiter:
    model: str
    client: str
    fits: Callable[[], bool]
    order: int
    turn: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class AdmissionQueue:
    """Hands free slots to waiting requests in turn (see the module's docstring)."""

    def __init__(self, max_waiting: int, max_wait_s: float) -> None:
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self._waiters: list[_Waiter] = []
        self._order = itertools.count()
        #: a slot handed to a waiter that has not taken it yet: nobody else may take one
        self._handed = 0
        #: generations running per client
        self.running: Counter[str] = Counter()

    def waiting(self, model: str) -> int:
        return sum(w.model == model for w in self._waiters)

    async def turn(self, model: str, client: str, fits: Callable[[], bool]) -> None:
        """Return when a generation of ``client`` on ``model`` may take a slot (``fits``
        says whether one is free): at once if nobody waits and one is; else in turn.
        The caller takes the slot and calls :meth:`taken`.

        Raises:
            QueueFull, WaitedTooLong.
        """
        if not self._waiters and not self._handed and fits():
            self._handed += 1
            return
        if self.waiting(model) >= self.max_waiting:
            raise QueueFull
        waiter = _Waiter(model, client, fits, next(self._order))
        self._waiters.append(waiter)
        self.wake()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.turn), self.max_wait_s)
        except TimeoutError:
            if waiter.turn.done():  # handed a slot just as the wait ran out: take it
                return
            self._waiters.remove(waiter)
            raise WaitedTooLong from None
        except asyncio.CancelledError:  # the client left while waiting
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.turn.done():
                self._handed -= 1
                self.wake()
            raise

    def taken(self, client: str) -> None:
        """The generation that :meth:`turn` let in holds its slot now."""
        self._handed -= 1
        self.running[client] += 1
        self.wake()

    def not_taken(self) -> None:
        """The request that :meth:`turn` let in ended before it took its slot."""
        self._handed -= 1
        self.wake()

    def done(self, client: str) -> None:
        """A generation of ``client`` ended and freed its slot."""
        self.running[client] -= 1
        if self.running[client] <= 0:
            del self.running[client]
        self.wake()

    def wake(self) -> None:
        """Hand a free slot to the first waiter that fits, clients with fewer generations
        running first; one at a time (the next once this one has taken it)."""
        if self._handed:
            return
        for waiter in sorted(self._waiters, key=lambda w: (self.running[w.client], w.order)):
            if waiter.fits():
                self._waiters.remove(waiter)
                self._handed += 1
                waiter.turn.set_result(None)
                return
