"""The streaming graph's step cost, measured once when an engine starts: the live capacity's
first estimate (``capacity.py``) comes from it.

The live step (8 frames), batch 1: live sessions' steps rarely fall due together (the
scheduler formed 1.12-1.18 steps per run with 2-5 sessions, 2026-12-02), and the batch-8 cost
overestimated (11 admitted on the stand-in, 4 held). Timed on every runner at once, as in
serving (one runner alone ran ~1.4x faster than two together), and on one runner alone.

On CPU the step scheduler runs every step alone (:data:`CPU_STEP_BATCH`): a batched row saves
only the run's per-call overhead and waits for the whole batch. Timed alone on two threads
(2-core Xeon, 2026-12-07), a batch of 8 cost per frame 1.13-1.23x a single step's on the
per-model HiFi-GAN V2, 0.92-1.07x on the demo's HiFi-GAN, 0.93-1.00x on the stand-in; served
unbatched, V2 held 12 live sessions against 10 with 11 % less CPU, and first audio came in
markedly sooner on both. (Measuring it at every start was tried and dropped: the batch-8
runs grow the step session's arena to a batch's peak for the server's life, ~0.6 GB on the
stand-in.) ``serve --step-batch N`` batches anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from distill_serve.bundle import STREAM_OPEN_END
from distill_serve.server.engine.config import EngineConfig
from distill_serve.server.engine.scheduler import BATCH_SIZES, BatchRunner
from distill_serve.server.pipeline.model import ModelSpec

#: The live step's frames, and the runs each runner makes of it.
STEP_FRAMES = 8
RUNS = 12
#: The largest batch of the CPU step scheduler unless configured (see above).
CPU_STEP_BATCH = 1


def max_step_batch(config: EngineConfig, device: bool) -> int:
    """The most steps a run may batch: ``config.step_batch``, else the largest of
    :data:`BATCH_SIZES` on the device and :data:`CPU_STEP_BATCH` on CPU."""
    if config.step_batch is not None:
        return config.step_batch
    return BATCH_SIZES[-1] if device else CPU_STEP_BATCH


@dataclass(frozen=True)
class StepCosts:
    """Wall seconds per stream frame of the live step at batch 1: on one runner ``alone``,
    and per runner with every runner running at once (``together``)."""

    alone: float
    together: float


def _timed(runners: Sequence[BatchRunner], model: ModelSpec, runs: int) -> float:
    """Wall seconds per frame (per runner) of ``runs`` single live steps on every runner in
    ``runners`` at once."""
    spec = model.stream
    assert spec is not None
    mel = np.full((1, model.n_mels_voc, STEP_FRAMES), -5.0, np.float32)
    position = np.zeros((1, 1), np.int64)
    end = np.full((1, 1), STREAM_OPEN_END, np.int64)
    state = np.zeros(spec.state_size, np.float32)  # a new stream's (a host state)

    def steps(run: BatchRunner) -> None:
        for _ in range(runs):
            run(mel, position, end, [state])

    threads = [threading.Thread(target=steps, args=(run,)) for run in runners]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - t0) / (runs * STEP_FRAMES)


def measure_step_costs(model: ModelSpec, runners: Sequence[BatchRunner]) -> StepCosts:
    """The live step's cost on ``runners`` (the step scheduler's batch runners)."""
    _timed(runners[:1], model, 1)  # warm-up
    alone = _timed(runners[:1], model, RUNS)
    together = _timed(runners, model, RUNS)
    return StepCosts(alone, together)
