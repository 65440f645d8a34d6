"""How many live sessions an engine keeps in real time, from the streaming graph's cost:
measured at start, then following the step costs the scheduler measures while it serves.

A figure measured once at start is only as good as that moment: a server started beside a
busy process measured 1 live session on the demo bundle where 2 hold, and refused a second
plug-in for its whole life. So the start measurement is only the first estimate; every run
of the step scheduler then updates a smoothed cost per frame (:class:`LiveCapacity`), and
admission and ``GetModelInfo`` read the current figure.
"""

from __future__ import annotations

import math
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
#: Smoothing of the served cost: each run's weight is 1 - exp(-audio / this), the audio (in
#: stream seconds) the run vocoded: a time constant of 4 s of served audio (a start figure 4x
#: off is within 12 % after 13 s of audio, 6.5 s of two sessions).
SMOOTHING_AUDIO_S = 4.0


class LiveCapacity:
    """The live sessions an engine admits now (:attr:`sessions`).

    ``seconds_per_frame`` is the machine's cost of one stream frame with every runner busy
    (wall seconds over the frames all runners vocode together). :meth:`observe` folds in a
    served run: its wall seconds per frame over the runners, times ``alone_penalty`` when
    fewer runners were busy than there are (a run alone is faster than one beside the
    others: measured at start). ``fixed``: a configured figure that never moves (0: no
    limit).
    """

    def __init__(
        self,
        frames_per_s: float,
        runners: int,
        seconds_per_frame: float,
        alone_penalty: float = 1.0,
        fixed: int | None = None,
    ) -> None:
        self.frames_per_s = frames_per_s
        self.runners = runners
        self.alone_penalty = alone_penalty
        self.fixed = fixed
        self._lock = threading.Lock()
        self._per_frame = seconds_per_frame
        self.observed_runs = 0

    @property
    def seconds_per_frame(self) -> float:
        with self._lock:
            return self._per_frame

    @property
    def sessions(self) -> int:
        """Live sessions admitted at once (0: no limit)."""
        if self.fixed is not None:
            return self.fixed
        return estimate(self.seconds_per_frame, self.frames_per_s)

    def observe(self, frames: int, seconds: float, busy: int) -> None:
        """A served run: ``frames`` stream frames in ``seconds`` wall, ``busy`` runners
        running at the time (this one included)."""
        if frames <= 0 or seconds <= 0:
            return
        per_frame = seconds / frames / self.runners
        if busy < self.runners:
            per_frame *= self.alone_penalty
        weight = 1.0 - math.exp(-frames / self.frames_per_s / SMOOTHING_AUDIO_S)
        with self._lock:
            self._per_frame += weight * (per_frame - self._per_frame)
            self.observed_runs += 1


def estimate(seconds_per_frame: float, frames_per_s: float) -> int:
    """Sessions the graph's share of the machine keeps in real time (at least 1)."""
    return max(1, int(CAPACITY_SHARE / (seconds_per_frame * frames_per_s)))


def measure_live_capacity(
    model: ModelSpec, runners: Sequence[Callable[..., Any]], fixed: int | None = None
) -> LiveCapacity:
    """The start estimate: the streaming graph's cost per frame on :data:`CAPACITY_BATCH`
    8-frame step (the live step), :data:`CAPACITY_RUNS` runs on every runner at once, against
    the frames per second a session needs, times :data:`CAPACITY_SHARE` (what is left is for
    serving: decoder, bridge, post-processing, gRPC, and for the steps' queueing); and the
    same runs on one runner alone, for the penalty of running beside the others."""
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

    t0 = time.perf_counter()
    steps(runners[0])
    alone = (time.perf_counter() - t0) / (CAPACITY_RUNS * b * frames)
    # every runner at once, as in serving (one alone ran ~1.4x faster than two together)
    threads = [threading.Thread(target=steps, args=(run,)) for run in runners]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    together = (time.perf_counter() - t0) / (CAPACITY_RUNS * b * frames)  # per runner
    frames_per_s = model.vocoder_rate / model.geometry.vocoder_hop  # per session
    return LiveCapacity(
        frames_per_s,
        len(runners),
        together / len(runners),
        alone_penalty=max(1.0, together / alone),
        fixed=fixed,
    )
