"""Giving freed memory back to the system.

A session of large requests (a 60 s, 96 kHz, float32, dual-seed stream holds tens of MB per
stage) leaves glibc's heaps grown to the high-water mark: freed blocks stay in the process,
spread over one arena per thread that ever allocated. Two glibc calls bound that, where the
C library is glibc (elsewhere both do nothing):

- ``mallopt(M_ARENA_MAX, n)`` at start: at most ``n`` arenas, so the generation threads
  share a few heaps instead of each growing its own;
- ``malloc_trim(0)`` once the server falls idle (no generation running) or every
  ``every_s`` while it stays busy: the free pages of every arena go back to the system.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from functools import cache

M_ARENA_MAX = -8  # glibc's mallopt parameter


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    return libc


def limit_arenas(arenas: int) -> bool:
    """At most ``arenas`` malloc arenas from now on (0: glibc's default); whether it took."""
    libc = _libc()
    return bool(arenas and libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1)


def trim() -> bool:
    """Give free heap pages back to the system; whether any were."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


class Trimmer:
    """Trims after a generation ends when none runs any more, or at most every ``every_s``
    while generations keep running; the trim runs off the event loop."""

    def __init__(self, enabled: bool, every_s: float = 2.0) -> None:
        self.enabled = enabled and _libc() is not None
        self._every = every_s
        self._last = 0.0
        self._running: asyncio.Task[bool] | None = None
        self.trims = 0

    def generation_ended(self, still_running: int) -> None:
        now = time.monotonic()
        if not self.enabled or (still_running and now - self._last < self._every):
            return
        if self._running is not None and not self._running.done():
            return
        self._last = now
        self.trims += 1
        self._running = asyncio.get_running_loop().create_task(asyncio.to_thread(trim))
