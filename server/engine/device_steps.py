"""The streaming vocoder's batched steps on the primary provider (CUDA; the CPU provider
stands in for it under fault injection): the step scheduler's batches run on the device
worker, each through a session bound to its shape.

Why it looks like this (server/engine/cuda.py says why the block path does the same):

- **One session per batch shape, a bounded set of them.** A batch is ``(B, n_mels, S)``
  with B from the scheduler's :data:`~distill_serve.server.engine.scheduler.BATCH_SIZES`.
  cuDNN rebuilds a conv's plan whenever its input shape differs from the previous call's, so
  each shape gets its own session (its plans, memory pattern and, later, CUDA graph), and
  each session holds its own arena at its peak and its own copy of the weights: their count
  must not grow with what clients ask. S is a step size (the bundle's ``step_frames``, the
  live blocks' 8 and 16) or one of a stream's short steps, which
  :func:`~distill_serve.server.pipeline.vocoder_stream.step_plan` splits into powers of two
  where the runner has ``fixed_step_shapes`` (a first feed's latency, a clip's tail). Steps
  of a step size run batched; short steps, rare (a stream's start and end), run one row at a
  time. So the sessions are at most :func:`step_shapes`: 6 x 3 + 3 = 21 on the bundles made
  here. A GPU server makes the ones a first request or a live session meets at start
  (:func:`warm_shapes`, 16; each costs start time), the batches of fixed-length clips' 32
  frames when first met. (Before step_plan, first steps and tails of any length made a
  session each: a CPU fault-injection test grew to 16 GB.)
- **IO binding; the states stay on the device.** A bound session's inputs and outputs live
  on the device; a batch copies its mel frames in and its audio out once, whatever its size,
  and allocates nothing per run. The streams' states are rows of the engine's state pool
  (``state_pool.py``): gathered into the bound state input and scattered back on the device,
  so they never cross to the host (a full-model state is 5 MB). Without a pool
  (``state_pool_mb`` 0) they travel with each batch, both ways.
- **On the device worker.** Every run goes through the engine's one device thread, between
  the decoder's runs, so runs never interleave on the device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from distill_serve.bundle import STREAM_OPEN_END
from distill_serve.server.engine.cuda import DeviceWorker, host_copy
from distill_serve.server.engine.scheduler import BATCH_SIZES
from distill_serve.server.engine.sessions import stacked_states
from distill_serve.server.engine.state_pool import StatePool
from distill_serve.server.pipeline.runner import StreamState

#: frames per step of the live blocks (``server/pipeline/live.py``: one or two normaliser
#: segments), batched beside the bundle's ``step_frames``
LIVE_FRAMES: tuple[int, ...] = (8, 16)


def batched_frames(step_frames: Sequence[int]) -> frozenset[int]:
    """The step sizes whose steps run batched: the bundle's and the live blocks'."""
    return frozenset(step_frames) | frozenset(LIVE_FRAMES)


def step_shapes(step_frames: Sequence[int], max_batch: int) -> tuple[tuple[int, int], ...]:
    """Every ``(batch, frames)`` shape the device path's steps take: each batch size up to
    ``max_batch`` at each batched step size, and one row at the powers of two below the
    largest that are not."""
    batched = batched_frames(step_frames)
    short = (1 << k for k in range(max(batched).bit_length()))
    sizes = [b for b in BATCH_SIZES if b <= max_batch]
    return tuple((b, s) for s in sorted(batched) for b in sizes) + tuple(
        (1, s) for s in short if s not in batched
    )


def warm_shapes(step_frames: Sequence[int], max_batch: int) -> tuple[tuple[int, int], ...]:
    """The shapes a GPU server makes at start: every live shape, and one row of the rest."""
    return tuple(
        (b, s) for b, s in step_shapes(step_frames, max_batch) if b == 1 or s in LIVE_FRAMES
    )


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The runs' outputs as one batch (a single run's as it is: a full model's batch of
    states is up to 160 MB, not worth a second copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


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
        self._update({"mel": mel, "position": position, "end": end, "state": state})
        self.session.run_with_iobinding(self._binding)
        audio, new_state = (host_copy(b) for b in self._outputs)
        return audio, new_state

    def run_pooled(
        self,
        mel: np.ndarray,
        position: np.ndarray,
        end: np.ndarray,
        rows: np.ndarray,
        pool: StatePool,
    ) -> np.ndarray:
        """One batch of exactly this shape whose states are rows ``rows`` of ``pool``: they
        are gathered into the state input and the new ones scattered back, on the device ->
        ``audio (B, 1, S*hop)``."""
        self._update({"mel": mel, "position": position, "end": end})
        pool.gather(rows, self._inputs["state"])
        self.session.run_with_iobinding(self._binding)
        pool.scatter(rows, self._outputs[1])
        return host_copy(self._outputs[0])

    def _update(self, given: dict[str, np.ndarray]) -> None:
        """Copy the ``given`` host inputs into their bound buffers (``end`` is left out on a
        graph without it; a pooled run's state comes from the pool)."""
        for name, buffer in self._inputs.items():
            if name in given:
                buffer.update_inplace(np.ascontiguousarray(given[name]))


class StepSessions:
    """The bound step sessions of one primary path, by shape, made on the device thread
    when a shape is first met (``make_session`` opens the graph on the primary provider).
    Steps of a ``batched`` size run as one batch; others one row at a time (module doc)."""

    def __init__(
        self,
        path: Path,
        make_session: Callable[[Path], ort.InferenceSession],
        worker: DeviceWorker,
        device: str,
        batched: frozenset[int],
        pool: StatePool | None = None,
    ) -> None:
        self._path = path
        self._pool = pool
        self._make_session = make_session
        self._worker = worker
        self._device = device
        self._batched = batched
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
        self, mel: np.ndarray, position: np.ndarray, end: np.ndarray, states: Sequence[StreamState]
    ) -> tuple[np.ndarray, list[StreamState]]:
        """A batch of steps on the device thread, through its shape's bound session (a short
        step's rows one by one, through the one-row session of its size); the states as rows
        of the pool where there is one (:meth:`_pooled`), else carried with the batch."""
        if self._pool is not None:
            pool = self._pool
            return self._worker.call(lambda: self._pooled(pool, mel, position, end, states))
        state = stacked_states(states)

        def job() -> list[tuple[np.ndarray, np.ndarray]]:
            return [
                session.run(mel[at], position[at], end[at], state[at])
                for session, at in self._plan(len(state), int(mel.shape[2]))
            ]

        parts = self._worker.call(job)
        return _joined([a for a, _ in parts]), list(_joined([s for _, s in parts]))

    def _pooled(
        self,
        pool: StatePool,
        mel: np.ndarray,
        position: np.ndarray,
        end: np.ndarray,
        states: Sequence[StreamState],
    ) -> tuple[np.ndarray, list[StreamState]]:
        """A batch whose states are pool rows (runs on the device thread): a host state (a
        new stream's) claims a row and is written into it; one that finds none runs through
        a scratch row and stays a host state (state_pool.py)."""
        rows = np.empty(len(states), np.int64)
        kept: list[StreamState] = list(states)
        uploads: list[int] = []  # the batch's rows whose host states go into the pool
        scratch: list[int] = []  # ... and of those, the ones that stay host states
        for i, state in enumerate(states):
            if pool.owns(state):
                rows[i] = state.row
                continue
            handle = pool.claim()
            if handle is None:
                rows[i] = pool.rows + len(scratch)
                scratch.append(i)
            else:
                rows[i] = handle.row
                kept[i] = handle
            uploads.append(i)
        if uploads:
            pool.write(rows[uploads], stacked_states([states[i] for i in uploads]))
        audio = _joined(
            [
                session.run_pooled(mel[at], position[at], end[at], rows[at], pool)
                for session, at in self._plan(len(states), int(mel.shape[2]))
            ]
        )
        if scratch:
            for i, state in zip(scratch, pool.read(rows[scratch]), strict=True):
                kept[i] = state
        return audio, kept

    def _plan(self, batch: int, frames: int) -> list[tuple[BoundStepSession, slice]]:
        """The runs of a batch (on the device thread): the whole batch through its shape's
        session where its step size runs batched, else each row through the one-row
        session of its size (module doc)."""
        if frames in self._batched or batch == 1:
            return [(self._session(batch, frames), slice(0, batch))]
        one = self._session(1, frames)
        return [(one, slice(i, i + 1)) for i in range(batch)]

    def _session(self, batch: int, frames: int) -> BoundStepSession:
        """The bound session of a shape (runs on the device thread)."""
        with self._lock:
            bound = self._bound.get((batch, frames))
        if bound is None:
            bound = BoundStepSession(self._make_session(self._path), batch, frames, self._device)
            with self._lock:
                self._bound[(batch, frames)] = bound
        return bound
