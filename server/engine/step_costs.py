"""The streaming graph's step cost, measured once when an engine starts: the live capacity's
first estimate (``capacity.py``) comes from it, and on CPU whether the step scheduler batches.

The live step (8 frames), batch 1: live sessions' steps rarely fall due together (the
scheduler formed 1.12-1.18 steps per run with 2-5 sessions, 2026-12-02), and the batch-8 cost
overestimated (11 admitted on the stand-in, 4 held). Timed on every runner at once, as in
serving (one runner alone ran ~1.4x faster than two together), and on one runner alone.

On CPU the same steps also run in batches of :data:`PROBE_BATCH`: batching saves only the
run's per-call overhead, and each row of a batch waits for the whole batch, so the CPU
scheduler batches only when a batched frame costs at most :data:`BATCH_GAIN` of a single
step's (2-core Xeon, 2026-12-07: the per-model HiFi-GAN V2 1.13-1.17x, the demo's HiFi-GAN
0.95-1.07x, the stand-in 0.93-0.96x; served live sessions of the V2 bundle took 7 % less CPU
unbatched, the demo's the same).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distill_serve.bundle import STREAM_OPEN_END
from distill_serve.server.engine.scheduler import BATCH_SIZES
from distill_serve.server.pipeline.model import ModelSpec

#: The live step's frames, and the runs each runner makes of it.
STEP_FRAMES = 8
RUNS = 12
#: The batch compared with single steps on CPU, and the cost per frame (relative to a single
#: step's) at or under which the CPU scheduler batches.
PROBE_BATCH = 8
BATCH_GAIN = 0.9


@dataclass(frozen=True)
class StepCosts:
    """Wall seconds per stream frame of the live step at batch 1: on one runner ``alone``,
    and per runner with every runner running at once (``together``); ``batched``: at
    :data:`PROBE_BATCH` with every runner running (None: not measured)."""

    alone: float
    together: float
    batched: float | None = None

    @property
    def batch_ratio(self) -> float | None:
        """A batched frame's cost over a single step's (None: not measured)."""
        return None if self.batched is None else self.batched / self.together

    def cpu_batch(self) -> int:
        """The largest batch the CPU step scheduler should form: all of them when batching
        is clearly cheaper per frame, else 1."""
        ratio = self.batch_ratio
        return BATCH_SIZES[-1] if ratio is not None and ratio <= BATCH_GAIN else 1


def _timed(runners: Sequence[Callable[..., Any]], model: ModelSpec, batch: int, runs: int) -> float:
    """Wall seconds per frame (per runner) of ``runs`` steps of ``batch`` rows on every
    runner in ``runners`` at once."""
    spec = model.stream
    assert spec is not None
    mel = np.full((batch, model.n_mels_voc, STEP_FRAMES), -5.0, np.float32)
    position = np.zeros((batch, 1), np.int64)
    end = np.full((batch, 1), STREAM_OPEN_END, np.int64)
    state = np.zeros((batch, spec.state_size), np.float32)

    def steps(run: Callable[..., Any]) -> None:
        for _ in range(runs):
            run(mel, position, end, state)

    threads = [threading.Thread(target=steps, args=(run,)) for run in runners]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - t0) / (runs * batch * STEP_FRAMES)


def measure_step_costs(
    model: ModelSpec, runners: Sequence[Callable[..., Any]], batched: bool = False
) -> StepCosts:
    """The live step's cost on ``runners`` (the step scheduler's batch runners); ``batched``:
    also in batches of :data:`PROBE_BATCH` (as many frames as the single steps)."""
    _timed(runners[:1], model, 1, 1)  # warm-up
    alone = _timed(runners[:1], model, 1, RUNS)
    together = _timed(runners, model, 1, RUNS)
    if not batched:
        return StepCosts(alone, together)
    _timed(runners[:1], model, PROBE_BATCH, 1)  # warm-up: a new shape
    probe = _timed(runners, model, PROBE_BATCH, max(2, RUNS // PROBE_BATCH))
    return StepCosts(alone, together, probe)
