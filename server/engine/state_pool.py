"""The device path's stream states, resident on the device: one pool tensor, a row per stream.

Why it looks like this:

- **States stay where the steps run.** A stream's state is its cached convolutions' memory:
  1 261 680 floats (5.0 MB) on the full 122 M BigVGAN, 0.78 MB on the demo, 0.19 MB on the
  per-model HiFi-GAN V2. Carried as host arrays, every batch would copy its rows' states to
  the device and back: 150 full-model live sessions at 8-frame steps move ~16 GB/s across
  PCIe, before the GPU computes anything. Here a stream's state is a row of the pool and the
  pipeline carries a handle to it (:class:`PooledState`); a batch gathers its rows into the
  step graph's state input and scatters the graph's new states back, both on the device
  (two small graphs, ``graphs/``, made by ``export/state_graphs.py``: the server extra has
  no ``onnx``). The scatter writes into the pool in place (the same buffer bound as its
  input and output: onnxruntime's ScatterND then copies only the rows).
- **A fixed number of rows, and host states past them.** The pool is made once, at its
  size (``EngineConfig.state_pool_mb``), so it never allocates while serving. A stream
  claims a row at its first device step and gives it back when its handle is dropped
  (``weakref.finalize``: the pipeline keeps no state past its stream). A stream that finds
  no free row keeps a host state, as before the pool, and tries again at its next step;
  its batch uses one of the pool's ``scratch`` rows for it, so every batch runs the one
  pooled way.
- **The engine's, not a primary's.** A primary path rebuilt after an out-of-memory keeps
  the pool, so no stream loses its state; a batch the device has no memory for reads its
  rows (:meth:`StatePool.read`, into host memory) and re-runs on the CPU, whose new host
  states give the rows back.

Concurrency: every run of the pool's graphs goes through the engine's device worker (the
caller is on it: :mod:`~distill_serve.server.engine.device_steps`); ``_lock`` guards the
free rows and the counters, which handles give back from any thread. Each session has its
own CUDA stream, and a run returns only when its device work is done (onnxruntime
synchronizes the providers at the end of every Run unless ``disable_synchronize_execution_
providers`` is set), so a gather's rows are in place before the step session's run reads
them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeGuard

import numpy as np
import onnxruntime as ort

from distill_serve.server.engine.cuda import host_copy
from distill_serve.server.pipeline.runner import StreamState

#: the pool's graphs, shipped with the server (export/state_graphs.py writes them)
GRAPHS = Path(str(resources.files(__package__))) / "graphs"
GATHER = GRAPHS / "state_gather.onnx"
SCATTER = GRAPHS / "state_scatter.onnx"


class PooledState:
    """A stream's state held in row :attr:`row` of a :class:`StatePool`: the handle the
    pipeline carries from step to step. The row goes back to the pool when the handle is
    dropped."""

    __slots__ = ("__weakref__", "pool", "row")

    def __init__(self, row: int, pool: StatePool) -> None:
        self.row = row
        self.pool = pool


@dataclass(frozen=True)
class PoolStats:
    """How the pool is used: its stream rows, those held now, the most held at once, and the
    steps that found no free row (ran with a host state, through a scratch row)."""

    rows: int
    in_use: int
    peak: int
    overflow_steps: int
    state_mb: float


def pool_rows(state_size: int, budget_mb: int, scratch: int) -> int:
    """Stream rows of a pool of at most ``budget_mb`` MiB, its ``scratch`` rows and its read
    buffer (as many rows again) apart."""
    return max(0, budget_mb * 2**20 // (4 * state_size) - 2 * scratch)


class StatePool:
    """``rows`` stream rows and ``scratch`` rows of ``state_size`` floats on ``device``
    (onnxruntime's name: "cuda", or "cpu" for the fault-injection stand-in).
    ``make_session`` opens a pool graph on the primary provider. Made and run on the device
    worker."""

    def __init__(
        self,
        rows: int,
        scratch: int,
        state_size: int,
        device: str,
        make_session: Callable[[Path], ort.InferenceSession],
    ) -> None:
        if rows < 1 or scratch < 1:
            raise ValueError(f"a state pool needs rows and scratch rows, got {rows}, {scratch}")
        self.rows = rows
        self.scratch = scratch
        self.state_size = state_size
        self._gather = make_session(GATHER)
        self._scatter = make_session(SCATTER)
        self._device = device
        shape = (rows + scratch, state_size)
        self._pool = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, 0)
        # what a read gathers into: made now, so a CPU fallback's read (for want of device
        # memory) allocates no state-sized buffer on the device
        read = (scratch, state_size)
        self._read = ort.OrtValue.ortvalue_from_shape_and_type(read, np.float32, device, 0)
        self._lock = threading.Lock()
        self._free = list(range(rows - 1, -1, -1))  # popped from the end: row 0 first
        self._peak = 0
        self._overflow = 0

    # --- rows (any thread) -----------------------------------------------------------------
    def claim(self) -> PooledState | None:
        """A free row as a new handle (None: every row is held)."""
        with self._lock:
            if not self._free:
                self._overflow += 1
                return None
            row = self._free.pop()
            self._peak = max(self._peak, self.rows - len(self._free))
        handle = PooledState(row, self)
        weakref.finalize(handle, self._give_back, row)
        return handle

    def _give_back(self, row: int) -> None:
        with self._lock:
            self._free.append(row)

    def owns(self, state: StreamState) -> TypeGuard[PooledState]:
        """Whether ``state`` is a row of this pool."""
        return isinstance(state, PooledState) and state.pool is self

    def stats(self) -> PoolStats:
        with self._lock:
            in_use = self.rows - len(self._free)
            mb = (self.rows + 2 * self.scratch) * self.state_size * 4 / 2**20
            return PoolStats(self.rows, in_use, self._peak, self._overflow, mb)

    # --- the device (its worker's thread) --------------------------------------------------
    def gather(self, rows: np.ndarray, into: ort.OrtValue) -> None:
        """Rows ``rows`` of the pool into ``into`` (a bound ``(B, N)`` buffer on the device)."""
        binding = self._binding(self._gather, rows)
        binding.bind_ortvalue_output("state", into)
        self._gather.run_with_iobinding(binding)

    def scatter(self, rows: np.ndarray, states: ort.OrtValue) -> None:
        """``states`` (a bound ``(B, N)`` buffer on the device) into rows ``rows``."""
        binding = self._scatter_binding(rows)
        binding.bind_ortvalue_input("state", states)
        self._scatter.run_with_iobinding(binding)

    def write(self, rows: np.ndarray, states: np.ndarray) -> None:
        """Host states ``(B, N)`` into rows ``rows``."""
        binding = self._scatter_binding(rows)
        binding.bind_cpu_input("state", np.ascontiguousarray(states, dtype=np.float32))
        self._scatter.run_with_iobinding(binding)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (at most ``scratch`` of them) as host states ``(B, N)``."""
        if len(rows) > self.scratch:
            raise ValueError(f"a read takes at most {self.scratch} rows, got {len(rows)}")
        binding = self._binding(self._gather, rows)
        shape = (len(rows), self.state_size)
        binding.bind_output("state", self._device, 0, np.float32, shape, self._read.data_ptr())
        self._gather.run_with_iobinding(binding)
        return host_copy(binding.get_outputs()[0])

    def host_states(self, states: Sequence[StreamState]) -> list[StreamState]:
        """``states`` with this pool's handles read into host arrays (one read for all)."""
        host = list(states)
        held = [(i, s.row) for i, s in enumerate(states) if self.owns(s)]
        for lo in range(0, len(held), self.scratch):  # a read fills the read buffer at most
            part = held[lo : lo + self.scratch]
            read = self.read(np.array([row for _, row in part], np.int64))
            for (i, _), state in zip(part, read, strict=True):
                host[i] = state
        return host

    def _binding(self, session: ort.InferenceSession, rows: np.ndarray) -> ort.IOBinding:
        binding = session.io_binding()
        binding.bind_ortvalue_input("pool", self._pool)
        binding.bind_cpu_input("rows", np.ascontiguousarray(rows, dtype=np.int64))
        return binding

    def _scatter_binding(self, rows: np.ndarray) -> ort.IOBinding:
        binding = self._binding(self._scatter, rows)
        binding.bind_ortvalue_output("pool_out", self._pool)  # in place: only the rows move
        return binding
