"""The step scheduler (server/engine/scheduler.py) without a model: it batches queued steps
of one shape most urgent first (rank, then deadline), a failed batch fails only its steps,
and it counts its runners' CPU time apart from their wall time."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from distill_serve.server.engine.scheduler import BATCH_SIZES, StepScheduler
from distill_serve.server.pipeline.runner import FIRST_AUDIO, LIVE, REST, Step


def _echo_batches(log: list[int], gate: threading.Event | None = None):  # type: ignore[no-untyped-def]
    """A batch runner that records batch sizes; audio = the mel summed, state + 1."""

    def run(mel, position, end, state):  # type: ignore[no-untyped-def]
        if gate is not None:
            gate.wait(10)
        log.append(mel.shape[0])
        audio = np.repeat(mel.sum(axis=1, keepdims=True), 2, axis=2)
        return audio, list(np.stack(state) + position.astype(np.float32))

    return run


def _step(frames: int, value: float, deadline: float, rank: int = REST) -> Step:
    mel = np.full((3, frames), value, np.float32)
    return Step(mel, 5, np.zeros(4, np.float32), deadline, rank=rank)


def test_scheduler_batches_queued_steps_of_one_shape_most_urgent_first() -> None:
    sizes: list[int] = []
    gate = threading.Event()
    scheduler = StepScheduler(_echo_batches(sizes, gate))
    try:
        now = time.monotonic()
        blocker = scheduler.submit(_step(8, 0.0, now))  # holds the loop while we queue
        time.sleep(0.1)
        late = [scheduler.submit(_step(8, v, now + 10 + v)) for v in range(6)]
        urgent = scheduler.submit(_step(16, 9.0, now))
        gate.set()
        audio, state = urgent.result(10)
        assert np.allclose(audio, 27.0) and audio.size == 32 and np.allclose(state, 5.0)
        results = [f.result(10) for f in late]
        blocker.result(10)
        for v, (a, _) in enumerate(results):
            assert np.allclose(a, 3.0 * v)  # every step gets its own row back
        # one step ran first; the urgent 16-frame step next; the six 8-frame steps as 4 + 2
        assert sizes == [1, 1, 4, 2] and set(sizes) <= set(BATCH_SIZES)
        st = scheduler.stats()
        assert st.steps == 8 and st.runs == 4 and st.batch_sizes[4] == 1
        assert st.missed >= 1  # the urgent step waited behind the gate past its deadline
    finally:
        scheduler.close()
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(_step(8, 0.0, 0.0))


def test_scheduler_serves_live_steps_then_first_audio_then_the_rest() -> None:
    """Rank before deadline: a fixed-length request's overdue step (its deadline long past,
    as when clients ask for more than real time) waits behind a live session's step and a new
    request's first audio, whose deadlines are later."""
    order: list[float] = []
    gate = threading.Event()

    def run(mel, position, end, state):  # type: ignore[no-untyped-def]
        gate.wait(10)
        order.extend(float(v) for v in mel[:, 0, 0])
        return np.zeros((mel.shape[0], 1, 2)), state

    scheduler = StepScheduler(run)
    try:
        now = time.monotonic()
        blocker = scheduler.submit(_step(8, -1.0, now))  # holds the loop while we queue
        time.sleep(0.1)
        # three shapes, so that each runs alone
        queued = [
            scheduler.submit(_step(8, 2.0, now - 5.0, REST)),
            scheduler.submit(_step(16, 1.0, now, FIRST_AUDIO)),
            scheduler.submit(_step(5, 0.0, now + 0.3, LIVE)),
        ]
        gate.set()
        for future in [blocker, *queued]:
            future.result(10)
        assert order == [-1.0, 0.0, 1.0, 2.0]
    finally:
        scheduler.close()


def test_a_failed_batch_fails_only_its_steps() -> None:
    calls = []

    def run(mel, position, end, state):  # type: ignore[no-untyped-def]
        calls.append(mel.shape[0])
        if len(calls) == 1:
            raise RuntimeError("boom")
        return np.zeros((mel.shape[0], 1, 2)), state

    scheduler = StepScheduler(run)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            scheduler.run([_step(8, 1.0, 0.0)])
        (audio, _), = scheduler.run([_step(8, 1.0, 0.0)])  # fmt: skip
        assert audio.shape == (2,)
    finally:
        scheduler.close()


def test_scheduler_counts_its_runs_cpu_time_apart_from_their_wall_time() -> None:
    """The serving overhead is the server's CPU less the graph's: the scheduler counts its
    runners' thread CPU time, which a run that waits (here: sleeps) does not add to."""

    def spin(mel, position, end, state):  # type: ignore[no-untyped-def]
        t0 = time.thread_time()
        while time.thread_time() - t0 < 0.03:
            pass
        return np.zeros((mel.shape[0], 1, 2)), state

    def sleep(mel, position, end, state):  # type: ignore[no-untyped-def]
        time.sleep(0.05)
        return np.zeros((mel.shape[0], 1, 2)), state

    runs: list[tuple[float, float]] = []  # (wall, cpu) from on_run
    totals = []
    for run in (spin, sleep):
        scheduler = StepScheduler(run)
        scheduler.on_run = lambda b, wall, cpu, missed: runs.append((wall, cpu))
        try:
            scheduler.run([_step(8, 1.0, 0.0)])
            totals.append(scheduler.stats().run_cpu_seconds)
        finally:
            scheduler.close()
    (_, spin_cpu), (sleep_wall, sleep_cpu) = runs
    assert spin_cpu >= 0.03 and totals[0] == spin_cpu
    assert sleep_wall >= 0.05 and sleep_cpu < 0.02 and totals[1] == sleep_cpu


@pytest.mark.parametrize(("max_batch", "expected"), [(1, [1] * 6), (3, [2, 2, 2]), (32, [4, 2])])
def test_max_batch_caps_every_run(max_batch: int, expected: list[int]) -> None:
    sizes: list[int] = []
    gate = threading.Event()
    scheduler = StepScheduler(_echo_batches(sizes, gate), max_batch=max_batch)
    try:
        now = time.monotonic()
        blocker = scheduler.submit(_step(8, 0.0, now))  # holds the loop while we queue
        time.sleep(0.1)
        queued = [scheduler.submit(_step(8, v, now + v)) for v in range(6)]
        gate.set()
        for v, f in enumerate(queued):
            assert np.allclose(f.result(10)[0], 3.0 * v)
        blocker.result(10)
        assert sizes == [1, *expected]
    finally:
        scheduler.close()
    with pytest.raises(ValueError, match="max_batch"):
        StepScheduler(_echo_batches([]), max_batch=0)
