"""Freed memory goes back to the system (server/api/memory.py): glibc's trim and arena cap,
and when the server trims (figures: benchmarks/memory.py)."""

from __future__ import annotations

import asyncio
import ctypes
from pathlib import Path

import numpy as np

from distill_serve.server.api.memory import Trimmer, limit_arenas, trim


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_trim_gives_freed_heap_pages_back() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # many small blocks (below mmap's threshold: they live in the heap), touched, then freed
    blocks = [libc.malloc(64 * 1024) for _ in range(3000)]
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)
    held = _rss_kb()
    for b in blocks:
        libc.free(b)
    trimmed = trim()
    assert trimmed
    assert _rss_kb() < held - 100 * 1024  # most of the ~190 MB is back with the system
    assert np.zeros(10).sum() == 0  # the process still works


def test_the_arena_cap_takes() -> None:
    assert limit_arenas(2)
    assert not limit_arenas(0)  # 0: leave glibc's default


def test_the_trimmer_trims_when_idle_and_at_most_every_few_seconds_while_busy() -> None:
    async def scenario() -> list[int]:
        t = Trimmer(True, every_s=60.0)
        counts = []
        t.generation_ended(still_running=0)  # idle: trim
        counts.append(t.trims)
        await asyncio.sleep(0.1)
        t.generation_ended(still_running=2)  # busy, and trimmed just now: not yet
        counts.append(t.trims)
        t.generation_ended(still_running=0)  # idle again: trim
        counts.append(t.trims)
        await asyncio.sleep(0.1)
        off = Trimmer(False)
        off.generation_ended(still_running=0)
        counts.append(off.trims)
        return counts

    assert asyncio.run(scenario()) == [1, 1, 2, 0]
