"""The CUDA path's policy: whether CUDA can run (and why not), which graphs run on the GPU,
on which thread, with which shapes.

Why it looks like this (issue: the first H100 run found ~2 s per session run):

- **Fixed shapes.** With cuDNN 9, onnxruntime's CUDA ``Conv``/``ConvTranspose`` keep one
  execution plan per node and rebuild it whenever the node's input shape differs from its
  *previous* call (``UpdateState`` in ``core/providers/cuda/nn/conv.cc`` compares with
  ``last_x_dims``). Vocoder blocks of 36, 72, 104, ... frames, and decoder batches of any
  size, from concurrent requests, would rebuild every conv plan on almost every run. So each
  GPU graph gets **one session per shape** from a small fixed set (:func:`vocoder_buckets`,
  :data:`DECODER_BATCHES`): a node then always sees the same shape, and plans, memory
  patterns and (later) CUDA graphs are reused. Vocoder windows are fitted to a bucket by
  taking more context from the mel (:func:`~distill_serve.server.pipeline.dsp.fit_window`), never by
  padding, so a CUDA block sees exactly the frames a CPU block sees at the clip's edges.
- **One owner thread.** Every GPU session run goes through one :class:`DeviceWorker` thread
  (as vLLM's engine loop or a Triton model instance): request threads queue work and wait,
  so runs never interleave on the device and per-thread CUDA state (streams, cuDNN handles)
  is made once.
- **IO binding.** Each bucket session has its input and output buffers bound once
  (:class:`BoundSession`); a run copies the input in and the output out, nothing else is
  allocated per run.
- **What stays on CPU.** The bridge (two small matmuls per frame) and the resamplers run on
  the CPU sessions even on a GPU server: they are cheap, their shapes change with every
  block, and moving them would cost more in transfers and plans than they take.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
T = TypeVar("T")

#: Block sizes (frames, context excluded) the pipeline vocodes: live blocks are 8 or 16
#: frames, fixed-length ones 16 (the first) then 32, 64, 128, 256 (``plan_blocks``).
LIVE_BLOCKS: tuple[int, ...] = (8, 16)
FIXED_BLOCKS: tuple[int, ...] = (16, 32, 64, 128, 256)


def vocoder_buckets(context: int) -> tuple[int, ...]:
    """Vocoder input lengths (frames, context included) that get their own GPU session, for a
    vocoder needing ``context`` frames each side: first blocks have context on the right only,
    the rest on both sides. BigVGAN's 20 give 28, 36, 48, 56, 72, 104, 168, 296; HiFi-GAN
    universal's 15 give 23, 31, 38, 46, 62, 94, 158, 286."""
    first = {b + context for b in LIVE_BLOCKS + FIXED_BLOCKS[:1]}
    inner = {b + 2 * context for b in LIVE_BLOCKS + FIXED_BLOCKS}
    return tuple(sorted(first | inner))


#: The buckets of a BigVGAN 44 kHz bundle without a streaming graph (context 20; one with it
#: has context 22, its stream latency, and gets ``vocoder_buckets(22)``).
VOCODER_BUCKETS: tuple[int, ...] = vocoder_buckets(20)
#: Decoder batch sizes that get their own GPU session; a batch is padded up to the next one.
DECODER_BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def cuda_unavailable_reason() -> str | None:
    """Why onnxruntime's CUDA provider cannot run here, or None if it can load.

    Loads CUDA and cuDNN from pip's ``nvidia`` wheels first (``onnxruntime.preload_dlls``:
    onnxruntime does not search them by itself), then tries to load the provider library, so
    a missing library or driver is named instead of onnxruntime's silent fallback to CPU.
    """
    if CUDA not in ort.get_available_providers():
        return (
            "this onnxruntime has no CUDA provider (CPU build); "
            "install onnxruntime-gpu (distill-serve[server] on Linux x86-64)"
        )
    try:
        ort.preload_dlls()
    except Exception as exc:  # a failed preload is reported below if it matters
        log.debug("onnxruntime.preload_dlls failed: %s", exc)
    provider = os.path.join(
        os.path.dirname(ort.__file__), "capi", "libonnxruntime_providers_cuda.so"
    )
    try:
        ctypes.CDLL(provider)
    except OSError as exc:
        text = str(exc)
        if "libcuda.so" in text:
            return f"no NVIDIA driver ({text}): no GPU on this machine, or the driver is missing"
        return f"CUDA libraries missing ({text}); pip install 'distill-serve[cuda]'"
    return None


class DeviceWorker:
    """One thread that owns a device: :meth:`call` runs a function on it and waits.

    It lives as long as its engine: primary sessions are rebuilt (after an out-of-memory)
    while requests may still run on the old ones, all on this same thread.
    """

    def __init__(self, name: str = "cuda-0") -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._run(*job)
            job = None  # nothing of a done job stays referenced while the thread waits
        while not self._jobs.empty():  # closed: refuse what came in meanwhile
            job = self._jobs.get_nowait()
            if job is not None:
                job[1].set_exception(RuntimeError("the device worker is closed"))

    @staticmethod
    def _run(fn: Callable[[], Any], future: Future[Any]) -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` for the device thread; its future gives its result (or error)."""
        if self._closed.is_set():
            raise RuntimeError("the device worker is closed")
        future: Future[T] = Future()
        self._jobs.put((fn, future))
        return future

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the device thread and return its result (or raise its error)."""
        return self.submit(fn).result()

    def close(self) -> None:
        self._closed.set()
        self._jobs.put(None)


def host_copy(value: ort.OrtValue) -> np.ndarray:
    """A bound output's data as a host array of its own. On a device, ``numpy()`` already
    copies to the host; on CPU it is a view of the bound buffer, which the next run
    overwrites, so it is copied once more (a full model's batch of 32 states is 160 MB: a
    second copy of it on the device path would cost ~16 ms of host memory traffic)."""
    data = value.numpy()
    return np.array(data) if value.device_name() == "cpu" else data


class BoundSession:
    """A session for one input shape with its input and output buffers bound once (IO
    binding). Made with one warm-up run, so cuDNN's plans for the shape exist before the
    first request.

    ``device`` is onnxruntime's name for where the buffers live ("cuda" on a GPU server,
    "cpu" for tests). Not thread-safe: run it from its :class:`DeviceWorker`.
    """

    def __init__(self, session: ort.InferenceSession, shape: tuple[int, ...], device: str) -> None:
        self.session = session
        self.shape = shape
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        warm = session.run(None, {inp.name: np.zeros(shape, np.float32)})[0]
        self._input = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, 0)
        self._output = ort.OrtValue.ortvalue_from_shape_and_type(warm.shape, np.float32, device, 0)
        self._binding = session.io_binding()
        self._binding.bind_ortvalue_input(inp.name, self._input)
        self._binding.bind_ortvalue_output(out.name, self._output)

    def run(self, x: np.ndarray) -> np.ndarray:
        """``x`` of exactly :attr:`shape` -> the output, copied to the host."""
        if x.shape != self.shape:
            raise ValueError(f"input {x.shape} does not fit this session's shape {self.shape}")
        self._input.update_inplace(np.ascontiguousarray(x, dtype=np.float32))
        self.session.run_with_iobinding(self._binding)
        return host_copy(self._output)
