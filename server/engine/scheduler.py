"""The step scheduler: one loop per engine that batches the streaming vocoder's steps of every
generation in flight.

Why it is shaped so:

- **Every generation is a stream of steps.** With the streaming vocoder graph
  (``export/streaming.py``; cached convolutions after Caillon & Esling, DAFx 2022) a
  generation advances by feeding S new mel frames and its state row; nothing is recomputed.
  Steps of the same S from different generations have the same shape, so they can be stacked
  into one run, as continuous batching does for LLM decoding (vLLM's scheduler: requests join
  and leave the batch at every step).
- **Policy apart from execution.** This module decides which steps run together and in what
  order; it runs them through a ``run_batch`` function it is given (the engine's session) and
  knows nothing of gRPC, mel sources or sessions (as vLLM keeps its ``Scheduler`` apart from
  the model runner). Each step comes back as one small result.
- **Rank, then deadline.** Each step carries a rank and a deadline (seconds on
  :func:`time.monotonic`; ranks in ``server/pipeline/runner.py``), in the issue's order: a
  live session's step (``LIVE``), due when its listener would run out of audio; a stream's
  first audio (``FIRST_AUDIO``), due now; the rest of a fixed-length request (``REST``), due
  when real time would reach it.
  Rank comes first: when fixed-length requests ask for more than the cores give, their later
  steps fall behind real time and their deadlines lie in the past, and by deadline alone they
  would run before every live step and every new request's first block (measured: a new
  request's first audio waited behind them, 0.85 s p50 at 8 stand-in clients against 0.35 s
  on the block path, where the OS shares the cores between request threads). The loop
  always serves the most urgent step first and fills its batch with queued steps of the same
  shape, most urgent first. It never waits to fill a batch: steps that arrive while a batch runs
  form the next one, so the wait for a batch is never longer than the run before it (and no
  step's slack is spent on waiting for company). Waiting, within the most urgent step's
  slack, for the other active streams' steps (as Triton's dynamic batcher waits up to its
  queue delay) was measured on two cores and kept out: the mean batch stayed ~1.5 and no
  more live sessions held, since on CPU a batched row saves 12-22 % of a step on the
  stand-in and nothing on HiFi-GAN (docs/performance.md, 2026-12-06).
- **A small fixed set of batch sizes** (:data:`BATCH_SIZES`, as the CUDA path's buckets): a
  batch takes the largest size that the queued steps of its shape fill, so every run has one
  of a few shapes (kernel plans, memory patterns) and none is padded with wasted rows.
- **On CPU, batches only where they pay.** A batched row saves only the run's per-call
  overhead, and every row of a batch waits for the whole batch; on the per-model HiFi-GAN V2
  a batch of 8 cost 1.13-1.17x per frame of single steps (its working set outgrows the
  caches), and served live sessions took 11 % more CPU with batches than without. So on CPU
  the engine gives the scheduler ``max_batch`` 1 (``step_costs.py``); the device path
  batches up to 32.
- **One loop per runner, one thread per runner's session.** On CPU the engine gives it one
  single-threaded session per core, and the loops take batches from the one queue side by
  side. A session with several intra-op threads splits some convolutions (BigVGAN's grouped
  ones) differently by batch size, so a batched row would differ from the same step alone
  in the last bits; single-threaded, every row is bit-identical whatever it is batched with,
  and a reply's bytes never depend on what else runs (``tests/server/pipeline/test_streaming.py``).

Concurrency: ``_cond`` guards ``_queue``, ``_closed`` and the statistics; a loop thread
holds it only to take a batch, never while a batch runs. Callers block in :meth:`run` on a
future the loop completes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from distill_serve.server.pipeline.runner import Step, StreamState

log = logging.getLogger(__name__)

#: Batch sizes a run may have (the most urgent step's shape, largest size that queued steps
#: fill). Up to 32 streams share a run.
BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)

#: ``(mel (B, n_mels, S), position (B, 1) int64, end (B, 1) int64, states)`` ->
#: ``(audio (B, 1, S*hop), next states)``: the streaming graph's session, a state per row
#: (:data:`~distill_serve.server.pipeline.runner.StreamState`: host arrays it stacks itself,
#: or the device pool's rows, which never leave the device: ``state_pool.py``).
BatchRunner = Callable[
    [np.ndarray, np.ndarray, np.ndarray, Sequence[StreamState]],
    tuple[np.ndarray, Sequence[StreamState]],
]


@dataclass
class _Queued:
    """A submitted :class:`Step`, when it came, and the future its caller waits on."""

    step: Step
    submitted: float = field(default_factory=time.monotonic)
    future: Future[tuple[np.ndarray, StreamState]] = field(default_factory=Future)


@dataclass
class SchedulerStats:
    """What the scheduler did (a copy; see :meth:`StepScheduler.stats`)."""

    steps: int = 0
    runs: int = 0
    missed: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    run_seconds: float = 0.0
    run_cpu_seconds: float = 0.0
    frames: int = 0

    @property
    def seconds_per_frame(self) -> float | None:
        """Measured graph time per stream frame (what one frame of one stream costs)."""
        return self.run_seconds / self.frames if self.frames else None


class StepScheduler:
    """Batches :class:`Step` s of many streams into runs of ``run_batch``, most urgent first,
    at most ``max_batch`` steps a run.

    Hooks (for metrics; set them before steps arrive): ``on_run(batch_size, seconds,
    cpu_seconds, missed)`` after every run (``cpu_seconds``: the running thread's CPU time,
    on a single-threaded session the graph's own cost as served), ``on_queue(depth)``
    whenever the queue changes, ``on_step(seconds)`` with each step's time from submission
    to result.
    """

    def __init__(
        self,
        runners: BatchRunner | Sequence[BatchRunner],
        name: str = "vocoder-steps",
        max_batch: int = BATCH_SIZES[-1],
    ) -> None:
        runners = [runners] if callable(runners) else list(runners)
        if not runners:
            raise ValueError("the step scheduler needs at least one batch runner")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        #: the batch sizes runs may have: :data:`BATCH_SIZES` up to ``max_batch``
        self.batch_sizes = tuple(b for b in BATCH_SIZES if b <= max_batch)
        self.on_run: Callable[[int, float, float, int], None] | None = None
        self.on_queue: Callable[[int], None] | None = None
        self.on_step: Callable[[float], None] | None = None
        #: ``(frames, seconds, busy)`` after every run: its stream frames, wall time and the
        #: loops running a batch when it started (itself included); the live capacity's input
        self.on_frames: Callable[[int, float, int], None] | None = None
        self._busy = 0
        self._cond = threading.Condition()
        self._queue: list[_Queued] = []
        self._closed = False
        self._stats = SchedulerStats()
        self._threads = [
            threading.Thread(target=self._loop, args=(run,), name=f"{name}-{i}", daemon=True)
            for i, run in enumerate(runners)
        ]
        for thread in self._threads:
            thread.start()

    # --- callers -------------------------------------------------------------------------
    def submit(self, step: Step) -> Future[tuple[np.ndarray, StreamState]]:
        """Queue ``step``; its future gives ``(audio (S * hop,), the stream's next state)``."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the step scheduler is closed")
            queued = _Queued(step)
            self._queue.append(queued)
            depth = len(self._queue)
            self._cond.notify()
        if self.on_queue is not None:
            self.on_queue(depth)
        return queued.future

    def run(self, steps: list[Step]) -> list[tuple[np.ndarray, StreamState]]:
        """Submit ``steps`` together (they may share a run) and wait for all of them."""
        futures = [self.submit(s) for s in steps]
        return [f.result() for f in futures]

    def stats(self) -> SchedulerStats:
        with self._cond:
            s = self._stats
            return SchedulerStats(
                s.steps,
                s.runs,
                s.missed,
                Counter(s.batch_sizes),
                s.run_seconds,
                s.run_cpu_seconds,
                s.frames,
            )

    def close(self) -> None:
        """Stop the loop; queued and later steps fail with RuntimeError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the loop --------------------------------------------------------------------------
    def _take(self) -> tuple[list[_Queued], int] | None:
        """The next batch (None once closed): the most urgent step (rank, then deadline) and
        the most urgent queued steps of its shape, as many as the largest batch size they
        fill; and the loops running a batch now, this one included."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                pending, self._queue = self._queue, []
                for step in pending:
                    step.future.set_exception(RuntimeError("the step scheduler is closed"))
                return None
            self._queue.sort(key=lambda q: (q.step.rank, q.step.deadline))
            shape = self._queue[0].step.frames
            same = [q for q in self._queue if q.step.frames == shape]
            size = max(b for b in self.batch_sizes if b <= len(same))
            batch = same[:size]
            taken = {id(s) for s in batch}
            self._queue = [s for s in self._queue if id(s) not in taken]
            depth = len(self._queue)
            self._busy += 1
            busy = self._busy
        if self.on_queue is not None:
            self.on_queue(depth)
        return batch, busy

    def _loop(self, run_batch: BatchRunner) -> None:
        while (taken := self._take()) is not None:
            self._run(run_batch, *taken)
            taken = None  # nothing of a done batch stays referenced while the loop waits

    def _run(self, run_batch: BatchRunner, batch: list[_Queued], busy: int) -> None:
        """One batch, its results handed to its callers. (Its own frame: no step or state of
        it stays referenced from the loop while the loop waits for the next batch; a pooled
        state's row goes back to the pool when its stream drops it.)"""
        started = time.monotonic()
        cpu0 = time.thread_time()
        steps = [q.step for q in batch]
        missed = sum(started > s.deadline for s in steps)
        try:
            audio, states = run_batch(
                np.stack([s.mel for s in steps]),
                np.array([[s.position] for s in steps], dtype=np.int64),
                np.array([[s.end] for s in steps], dtype=np.int64),
                [s.state for s in steps],
            )
        except BaseException as exc:  # handed to every caller of the batch
            log.exception("vocoder step batch of %d failed", len(batch))
            with self._cond:
                self._busy -= 1
            for q in batch:
                q.future.set_exception(exc)
            return
        seconds = time.monotonic() - started
        cpu = time.thread_time() - cpu0
        frames = sum(s.frames for s in steps)
        with self._cond:
            self._busy -= 1
            st = self._stats
            st.steps += len(batch)
            st.runs += 1
            st.missed += missed
            st.batch_sizes[len(batch)] += 1
            st.run_seconds += seconds
            st.run_cpu_seconds += cpu
            st.frames += frames
        if self.on_run is not None:
            self.on_run(len(batch), seconds, cpu, missed)
        if self.on_frames is not None:
            self.on_frames(frames, seconds, busy)
        done = time.monotonic()
        for i, q in enumerate(batch):
            q.future.set_result((audio[i].reshape(-1), states[i]))
            if self.on_step is not None:
                self.on_step(done - q.submitted)
