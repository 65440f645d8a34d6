"""The streaming vocoder's batched steps on the primary provider (CUDA; the CPU provider
stands in for it under fault injection): the step scheduler's batches run on the device
worker, each through a session bound to its shape.

Why it looks like this (server/engine/cuda.py says why the block path does the same):

- **One session per batch shape, made on first use.** A batch is ``(B, n_mels, S)`` with B
  from the scheduler's :data:`~distill_serve.server.engine.scheduler.BATCH_SIZES` and S from
  the graph's step sizes, so there are at most 6 x 3 shapes. cuDNN rebuilds a conv's plan
  whenever its input shape differs from the previous call's, so each shape gets its own
  session (its plans, memory pattern and, later, CUDA graph). A GPU server warms the shapes
  live sessions use at start (:meth:`StepSessions.warm`); the rest are made when first met.
- **IO binding, one copy each way per batch.** A bound session's inputs and outputs live on
  the device; a batch copies its stacked inputs in and its outputs out once, whatever its
  size, and allocates nothing per run. (The stream states still travel to the host and back
  with each batch: keeping them resident on the device needs a per-stream slot pool, the
  next step; see docs/gpu.md.)
- **On the device worker.** Every run goes through the engine's one device thread, between
  the decoder's runs, so runs never interleave on the device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from distill_serve.bundle import STREAM_OPEN_END
from distill_serve.server.engine.cuda import DeviceWorker

#: ``(batch, frames)`` the live sessions' steps have: warmed at start on a GPU.
LIVE_STEP_SHAPES: tuple[tuple[int, int], ...] = tuple(
    (b, s) for s in (8, 16) for b in (1, 2, 4, 8, 16, 32)
)


class BoundStepSession:
    """The streaming graph for one ``(batch, frames)`` shape, its buffers bound once."""

    def __init__(self, session: ort.InferenceSession, batch: int, frames: int, device: str) -> None:
        self.session = session
        self.shape = (batch, frames)
        inputs = {i.name: i for i in session.get_inputs()}
        n_mels = int(inputs["mel"].shape[1])
        state_size = int(inputs["state"].shape[1])
        feeds: dict[str, np.ndarray] = {
            "mel": np.zeros((batch, n_mels, frames), np.float32),
            "position": np.zeros((batch, 1), np.int64),
            "state": np.zeros((batch, state_size), np.float32),
        }
        if "end" in inputs:  # graphs exported before the end input lack it
            feeds["end"] = np.full((batch, 1), STREAM_OPEN_END, np.int64)
        warm = session.run(None, feeds)  # the shape's plans exist before the first batch
        self._binding = session.io_binding()
        self._inputs: dict[str, ort.OrtValue] = {}
        for name, value in feeds.items():
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(value.shape, value.dtype, device, 0)
            self._binding.bind_ortvalue_input(name, buffer)
            self._inputs[name] = buffer
        self._outputs = []
        for out, value in zip(session.get_outputs(), warm, strict=True):
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(value.shape, value.dtype, device, 0)
            self._binding.bind_ortvalue_output(out.name, buffer)
            self._outputs.append(buffer)

    def run(
        self, mel: np.ndarray, position: np.ndarray, end: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One batch of exactly this shape -> ``(audio (B, 1, S*hop), state (B, N))``."""
        given = {"mel": mel, "position": position, "end": end, "state": state}
        for name, buffer in self._inputs.items():
            buffer.update_inplace(np.ascontiguousarray(given[name]))
        self.session.run_with_iobinding(self._binding)
        audio, new_state = (np.array(b.numpy()) for b in self._outputs)
        return audio, new_state


class StepSessions:
    """The bound step sessions of one primary path, by shape, made on the device thread
    when a shape is first met (``make_session`` opens the graph on the primary provider)."""

    def __init__(
        self,
        path: Path,
        make_session: Callable[[Path], ort.InferenceSession],
        worker: DeviceWorker,
        device: str,
    ) -> None:
        self._path = path
        self._make_session = make_session
        self._worker = worker
        self._device = device
        self._lock = threading.Lock()  # guards _bound (read from callers, filled on the worker)
        self._bound: dict[tuple[int, int], BoundStepSession] = {}

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        with self._lock:
            return tuple(sorted(self._bound))

    def warm(self, shapes: tuple[tuple[int, int], ...]) -> None:
        """Make the sessions of ``shapes`` now (at start, so no request pays for them)."""
        for batch, frames in shapes:
            self._worker.call(lambda b=batch, s=frames: self._session(b, s))

    def run(
        self, mel: np.ndarray, position: np.ndarray, end: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A batch of steps on the device thread, through its shape's bound session."""
        batch, frames = int(mel.shape[0]), int(mel.shape[2])

        def job() -> Any:
            return self._session(batch, frames).run(mel, position, end, state)

        audio, new_state = self._worker.call(job)
        return audio, new_state

    def _session(self, batch: int, frames: int) -> BoundStepSession:
        """The bound session of a shape (runs on the device thread)."""
        with self._lock:
            bound = self._bound.get((batch, frames))
        if bound is None:
            bound = BoundStepSession(self._make_session(self._path), batch, frames, self._device)
            with self._lock:
                self._bound[(batch, frames)] = bound
        return bound
