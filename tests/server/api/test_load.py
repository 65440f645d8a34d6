"""Load with cancellation on loopback: 200 concurrent streams against a concurrency limit of
3, a share cancelled midway and a share with short deadlines. Rejected clients retry after
the server's hint (with jitter) until a 60 s budget runs out. Bounded: every request is a
0.4 s clip and the whole run stops by itself."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from distill_serve.client import AsyncClient, DistillError
from distill_serve.server.engine.engine import Engine
from tests.conftest import start_server

N_REQUESTS = 200
LIMIT = 3


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


RETRY_BUDGET_S = 60.0


async def attempt(client: AsyncClient, i: int) -> tuple[str, float | None, int | None]:
    """One call of request ``i``: (outcome, time to first audio, retry hint)."""
    behaviour = ("cancel", "deadline", "normal", "normal", "normal")[i % 5]
    timeout = 0.15 if behaviour == "deadline" else 60.0
    started = time.perf_counter()
    first = None
    try:
        async for block in client.stream("crossfade", 0.4, seed=i, timeout=timeout):
            if first is None:
                first = time.perf_counter() - started
                assert block.sample_offset == 0
            if behaviour == "cancel":
                return "cancelled", first, None  # leaving the loop cancels the call
        return "completed", first, None
    except DistillError as exc:
        if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return "rejected", None, exc.retry_after_ms
        if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "deadline", None, None
        return f"error:{exc.code.name}:{exc.details}", None, None


async def one(client: AsyncClient, i: int) -> tuple[str, float | None, list[int | None]]:
    """Request ``i`` with retries on RESOURCE_EXHAUSTED: (outcome, first audio, hints seen)."""
    rng = random.Random(i)
    hints: list[int | None] = []
    deadline = time.perf_counter() + RETRY_BUDGET_S
    while True:
        outcome, first, hint = await attempt(client, i)
        if outcome != "rejected":
            return outcome, first, hints
        hints.append(hint)
        if time.perf_counter() > deadline:
            return "rejected", None, hints
        await asyncio.sleep((hint or 500) / 1000 * rng.uniform(0.05, 1.0))


async def load(target: str) -> list[tuple[str, float | None, list[int | None]]]:
    clients = [AsyncClient(target) for _ in range(8)]
    try:
        return await asyncio.gather(*(one(clients[i % 8], i) for i in range(N_REQUESTS)))
    finally:
        for c in clients:
            await c.close()


def test_load_with_cancellation_and_deadlines(engine: Engine, report) -> None:  # type: ignore[no-untyped-def]
    s = start_server(engine, max_concurrent=LIMIT)
    try:
        warm_up(s.target)
        gc.collect()
        tasks_before = s.call(_task_count())
        threads_before = {t.ident for t in threading.enumerate()}
        rss_before = rss_mb()
        labels = {"rpc": "GenerateStream", "mode": "crossfade", "status": "OK"}
        ok_before = s.metric("distill_requests_total", labels)
        started = time.perf_counter()
        results = asyncio.run(load(s.target))
        elapsed = time.perf_counter() - started
        time.sleep(0.5)
        gc.collect()
        outcomes = Counter(r[0] for r in results)
        firsts = np.array([r[1] for r in results if r[0] == "completed"])
        retry_hints = [h for r in results for h in r[2]]
        rss_after = rss_mb()
        report(
            f"load: {N_REQUESTS} streams in {elapsed:.1f} s, limit {LIMIT}: {dict(outcomes)} after "
            f"{len(retry_hints)} RESOURCE_EXHAUSTED answers (all with retry hints); "
            f"first audio p50 {np.percentile(firsts, 50) * 1000:.0f} ms, "
            f"p99 {np.percentile(firsts, 99) * 1000:.0f} ms; "
            f"RSS {rss_before:.0f} MB before, {rss_after:.0f} MB after"
        )
        assert sum(outcomes.values()) == N_REQUESTS
        assert set(outcomes) <= {"completed", "rejected", "cancelled", "deadline"}, outcomes
        assert outcomes["completed"] > 50 and outcomes["cancelled"] > 0
        assert outcomes["deadline"] > 0
        assert len(retry_hints) > N_REQUESTS  # the limit really turned requests away
        assert all(h == 500 for h in retry_hints)  # every rejection carries a retry hint
        # Nothing leaks: no generation running, no tasks or threads left, memory near idle.
        assert s.metric("distill_active_generations", {"rpc": "GenerateStream"}) == 0
        assert s.call(_task_count()) <= tasks_before
        assert _new_threads(threads_before) == []
        assert rss_after < rss_before + 200
        # Every stream a client saw complete was counted OK by the server.
        assert s.metric("distill_requests_total", labels) - ok_before >= outcomes["completed"]
    finally:
        s.stop()


def warm_up(target: str) -> None:
    """A few plain requests, so executor threads and sessions exist before measuring."""

    async def go() -> None:
        async with AsyncClient(target) as c:
            await asyncio.gather(*(c.generate("crossfade", 0.4, seed=i) for i in range(LIMIT)))

    asyncio.run(go())


def _new_threads(before: set[int | None], settle_s: float = 30.0) -> list[str]:
    """Threads started since ``before`` still alive once the others have ended (waiting up
    to ``settle_s``: a cancelled stream's thread finishes its step first), except the workers
    of the server's bounded pools, which may have grown under load and stay idle, as a
    ThreadPoolExecutor's do: its generation pool (``generate_N``, up to the limit) and its
    event loop's default executor (``asyncio_N``, up to asyncio's default size). More than a
    pool's bound would be a leak."""
    bounds = {"generate_": LIMIT, "asyncio_": min(32, (os.cpu_count() or 1) + 4)}
    deadline = time.monotonic() + settle_s
    while True:
        new = [t.name for t in threading.enumerate() if t.ident not in before]
        left = [n for n in new if not any(n.startswith(p) for p in bounds)]
        for prefix, bound in bounds.items():
            left += [n for n in new if n.startswith(prefix)][bound:]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


async def _task_count() -> int:
    return len(asyncio.all_tasks()) - 1  # minus the task counting
