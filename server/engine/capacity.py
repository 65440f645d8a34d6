"""How many live sessions an engine keeps in real time, from the streaming graph's cost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distill_serve.bundle import STREAM_OPEN_END
from distill_serve.server.pipeline.model import ModelSpec

#: Live capacity estimate: steps per batch when timing the streaming graph at start, and the
#: share of the cores' time the graph may take. Batch 1: live sessions' steps rarely fall due
#: together (the scheduler formed 1.12-1.18 steps per run with 2-5 sessions, 2026-12-02), and
#: the batch-8 cost overestimated (11 admitted on the stand-in, 4 held). 0.75: the stand-in
#: held 4 sessions with the graph at 60 % of two cores and underran at 5 (73 %); the demo
#: held 2 at 75 % (benchmarks/results/cpu-2core-zen4-stream.json).
CAPACITY_BATCH = 1
CAPACITY_SHARE = 0.75
CAPACITY_RUNS = 12


def measure_live_capacity(model: ModelSpec, runners: Sequence[Callable[..., Any]]) -> int:
    """Live sessions the runners can keep in real time: the streaming graph's cost per frame
    on :data:`CAPACITY_BATCH` 8-frame step (the live step), :data:`CAPACITY_RUNS` runs on
    every runner at once, against the frames per second a session needs, times
    :data:`CAPACITY_SHARE` (what is left is for serving: decoder, bridge, post-processing,
    gRPC, and for the steps' queueing)."""
    spec = model.stream
    assert spec is not None
    b, frames = CAPACITY_BATCH, 8
    mel = np.full((b, model.n_mels_voc, frames), -5.0, np.float32)
    position = np.zeros((b, 1), np.int64)
    end = np.full((b, 1), STREAM_OPEN_END, np.int64)
    state = np.zeros((b, spec.state_size), np.float32)
    runners[0](mel, position, end, state)  # warm-up

    def steps(run: Callable[..., Any]) -> None:
        for _ in range(CAPACITY_RUNS):
            run(mel, position, end, state)

    # every runner at once, as in serving (one alone ran ~1.4x faster than two together)
    threads = [threading.Thread(target=steps, args=(run,)) for run in runners]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_frame = (time.perf_counter() - t0) / (CAPACITY_RUNS * b * frames * len(runners))
    needed = model.vocoder_rate / model.geometry.vocoder_hop  # frames per second per session
    return max(1, int(CAPACITY_SHARE / (per_frame * needed)))
