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

from distill_serve.server.engine.step_costs import StepCosts
from distill_serve.server.pipeline.model import ModelSpec

#: The share of the cores' time the graph may take. 0.75: the stand-in held 4 sessions with
#: the graph at 60 % of two cores and underran at 5 (73 %); the demo held 2 at 75 %
#: (benchmarks/results/cpu-2core-zen4-stream.json).
CAPACITY_SHARE = 0.75
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


def live_capacity(
    model: ModelSpec, runners: int, costs: StepCosts, fixed: int | None = None
) -> LiveCapacity:
    """The start estimate from the step costs measured at start (``step_costs.py``): the
    cost per frame with every runner busy, and the penalty of a runner running alone."""
    frames_per_s = model.vocoder_rate / model.geometry.vocoder_hop  # per session
    return LiveCapacity(
        frames_per_s,
        runners,
        costs.together / runners,
        alone_penalty=max(1.0, costs.together / costs.alone),
        fixed=fixed,
    )
