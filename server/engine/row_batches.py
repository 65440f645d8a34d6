"""A row-wise graph's runs from many callers, coalesced on the device thread: the decoder's
latents of every generation in flight, run together.

Why: on the device path every session run goes through the one device thread
(:class:`~distill_serve.server.engine.cuda.DeviceWorker`). A live session decodes a latent
or two whenever its trajectory reaches the next chunk, so hundreds of them would each pay a
device run (kernel launches, a copy each way) for one row. Here a caller's rows join a queue,
and one job on the device thread runs every row queued by then in one run; rows that arrive
while it runs wait for the next one, which the job queues behind the work queued meanwhile
(the vocoder's step batches), so neither starves the other. Nothing waits to fill a batch:
with one caller a run is that caller's rows, as before. On fixed shapes (CUDA: a session per
batch size) a run is padded up to the smallest size that holds it.

A decoder row's output does not depend on the rows beside it on onnxruntime's CPU provider
(checked on the demo and stand-in bundles); on CUDA a batch size may pick other cuDNN
kernels, as the block path's padding to a size already does.

Concurrency: ``_lock`` guards the queue, whether a job is queued and the counters; the job
runs the graph without it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from distill_serve.server.engine.cuda import DeviceWorker

#: the most rows a run takes where the sessions have no fixed sizes
MAX_ROWS = 256


class RowBatcher:
    """Runs ``run`` (on the device thread: ``(B, ...)`` -> ``(B, ...)``, B one of ``sizes``,
    or any B up to :data:`MAX_ROWS` where ``sizes`` is empty) on the rows of many callers."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        worker: DeviceWorker,
        sizes: tuple[int, ...] = (),
        on_run: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self._on_run = on_run  # with the calls each job served (for metrics)
        self._worker = worker
        self._sizes = tuple(sorted(sizes))
        self._max = self._sizes[-1] if self._sizes else MAX_ROWS
        self._lock = threading.Lock()
        self._queue: list[tuple[np.ndarray, Future[np.ndarray]]] = []
        self._queued = False  # a drain job is on the device thread's queue
        #: calls made, and the jobs that ran them (a job serves one call or more, in one
        #: run unless its rows pass the largest size)
        self.calls = 0
        self.runs = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        """``x`` ``(B, ...)`` through the graph, in a run shared with other callers' rows."""
        future: Future[np.ndarray] = Future()
        with self._lock:
            self._queue.append((x, future))
            self.calls += 1
            start, self._queued = not self._queued, True
        if start:
            self._schedule()
        return future.result()

    def _schedule(self) -> None:
        try:
            job = self._worker.submit(self._drain)
        except RuntimeError as exc:  # the worker is closed
            self._fail(exc)
            return

        def refused(done: Future[None]) -> None:  # closed before the job ran
            if (exc := done.exception()) is not None:
                self._fail(exc)

        job.add_done_callback(refused)

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            queue, self._queue, self._queued = self._queue, [], False
        for _, future in queue:
            future.set_exception(exc)

    def _drain(self) -> None:
        """One run of the rows queued now (on the device thread); never raises."""
        with self._lock:
            taken: list[tuple[np.ndarray, Future[np.ndarray]]] = []
            rows = 0
            while self._queue and (not taken or rows + len(self._queue[0][0]) <= self._max):
                taken.append(self._queue.pop(0))
                rows += len(taken[-1][0])
            more = self._queued = bool(self._queue)
            self.runs += 1
        if more:  # behind what was queued on the device thread meanwhile
            self._schedule()
        try:
            out = self._padded(np.concatenate([x for x, _ in taken]))
        except BaseException as exc:  # handed to every caller of the run
            for _, future in taken:
                future.set_exception(exc)
            return
        at = 0
        for x, future in taken:
            future.set_result(out[at : at + len(x)])
            at += len(x)
        if self._on_run is not None:
            self._on_run(len(taken))

    def _padded(self, x: np.ndarray) -> np.ndarray:
        """``x`` in runs of at most the largest size, each padded up to a size."""
        out = []
        for lo in range(0, len(x), self._max):
            part = x[lo : lo + self._max]
            if not self._sizes:
                out.append(self._run(part))
                continue
            size = next(b for b in self._sizes if b >= len(part))
            padded = np.zeros((size, *part.shape[1:]), part.dtype)
            padded[: len(part)] = part
            out.append(self._run(padded)[: len(part)])
        return np.concatenate(out) if len(out) > 1 else out[0]
