"""The primary path: the decoder and vocoder on CUDA (or, under fault injection, on CPU
stand-ins for it), its build, retry and out-of-memory faults.

:mod:`distill_serve.server.engine.cuda` says why the sessions are shaped as they are (fixed
shapes, one owner thread, IO binding). A primary path that cannot be built leaves the engine
serving on CPU, says why (:attr:`PrimaryPath.note`) and is retried every ``primary_retry_s``,
doubling up to :data:`MAX_RETRY_S`.

Concurrency: primary sessions run only on the :class:`~distill_serve.server.engine.cuda.
DeviceWorker` thread. ``PrimaryPath._lock`` guards the swap of :attr:`PrimaryPath.current`,
the retry timer, the worker and the fault-injection counters; no run holds it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

from distill_serve.server.engine.config import CPU, EngineConfig
from distill_serve.server.engine.cuda import (
    CUDA,
    DECODER_BATCHES,
    BoundSession,
    DeviceWorker,
    cuda_unavailable_reason,
    vocoder_buckets,
)
from distill_serve.server.engine.device_steps import StepSessions, batched_frames, warm_shapes
from distill_serve.server.engine.row_batches import RowBatcher
from distill_serve.server.engine.sessions import session_options, step_options
from distill_serve.server.engine.state_pool import StatePool, pool_rows
from distill_serve.server.engine.step_costs import max_step_batch
from distill_serve.server.pipeline.model import ModelSpec
from distill_serve.server.pipeline.runner import StreamState

log = logging.getLogger(__name__)

OOM_MARKERS = ("out of memory", "failed to allocate memory", "bfcarena", "alloc_failed")
#: Graphs the primary path runs; the bridge and resamplers stay on CPU (see cuda.py).
PRIMARY_GRAPHS = ("decoder", "vocoder")
MAX_RETRY_S = 600.0


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an onnxruntime error is a device out-of-memory."""
    text = str(exc).lower()
    return any(marker in text for marker in OOM_MARKERS)


class Primary:
    """The decoder and vocoder on the primary provider, run by one device thread.

    With fixed shapes there is one IO-bound session per decoder batch size and per vocoder
    window length; otherwise one session per graph with dynamic shapes.
    """

    def __init__(
        self,
        sessions: dict[str, ort.InferenceSession | dict[int, BoundSession]],
        worker: DeviceWorker,
        provider: str,
        steps: StepSessions | None = None,
        on_decoder_run: Callable[[int], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._worker = worker
        self.provider = provider
        #: the decoder's rows of every generation, coalesced into shared runs
        decode, sizes = self._decoder_run(sessions["decoder"])
        self.decoder = RowBatcher(decode, worker, sizes, on_decoder_run)
        #: the streaming graph's batched steps on this provider (None: no streaming graph)
        self.steps = steps

    @staticmethod
    def _decoder_run(
        sessions: ort.InferenceSession | dict[int, BoundSession],
    ) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, ...]]:
        """The decoder's run on the device thread, and its fixed batch sizes (if any)."""
        if isinstance(sessions, dict):
            return (lambda z: sessions[len(z)].run(z)), tuple(sessions)
        name = sessions.get_inputs()[0].name
        return (lambda z: np.asarray(sessions.run(None, {name: z})[0])), ()

    @property
    def vocoder_buckets(self) -> tuple[int, ...]:
        vocoder = self._sessions["vocoder"]
        return tuple(sorted(vocoder)) if isinstance(vocoder, dict) else ()

    def serves(self, name: str, x: np.ndarray) -> bool:
        """Whether this input runs here (a vocoder window that fits no bucket runs on CPU)."""
        sessions = self._sessions.get(name)
        if isinstance(sessions, dict) and name == "vocoder":
            return x.shape[2] in sessions
        return sessions is not None

    def run(self, name: str, x: np.ndarray) -> np.ndarray:
        if name == "decoder":
            return self.decoder.run(x)
        sessions = self._sessions[name]
        if not isinstance(sessions, dict):
            session = sessions
            feed = {session.get_inputs()[0].name: x}
            return self._worker.call(lambda: np.asarray(session.run(None, feed)[0]))
        bound = sessions[x.shape[2]]
        return self._worker.call(lambda: bound.run(x))


class PrimaryPath:
    """Builds, rebuilds and retries the :class:`Primary` of one engine's ``graphs``
    (:data:`PRIMARY_GRAPHS` -> file), and injects faults into it for tests.

    ``on_failure`` is called with the reason each time a build fails, ``on_decoder_run``
    with the generations each device decoder run served.
    """

    def __init__(
        self,
        config: EngineConfig,
        model: ModelSpec,
        graphs: dict[str, Path],
        on_failure: Callable[[str], None],
        stream: Path | None = None,
        on_decoder_run: Callable[[int], None] | None = None,
    ) -> None:
        self._config = config
        self._model = model
        self._graphs = graphs
        self._stream = stream  # the streaming vocoder graph, when steps run here
        self._on_failure = on_failure
        self._on_decoder_run = on_decoder_run
        self._lock = threading.Lock()
        self._inject = 0
        self._init_failures = config.inject_init_failures
        self._retry: threading.Timer | None = None
        self._retry_s = config.primary_retry_s
        self._worker: DeviceWorker | None = None  # the device's thread, made with the primary
        #: the primary in service (None: the engine serves on CPU)
        self.current: Primary | None = None
        #: why CUDA is not serving although it was wanted ("" when it is, or was not wanted)
        self.note = ""
        #: the streams' states on the device (state_pool.py), kept across rebuilds
        self.pool: StatePool | None = None

    def build(self) -> None:
        """(Re)build the primary path; on failure serve on CPU, say why and retry later."""
        c = self._config
        if c.use_cuda:
            reason = cuda_unavailable_reason()
            if reason is not None:  # no driver, no provider, missing libraries: no retry
                self._failed(f"CUDA unavailable: {reason}", retry=False)
                if not c.fault_injection:
                    return
            else:
                self._try([(CUDA, self._cuda_options()), CPU], "cuda", CUDA)
                return
        if c.fault_injection:
            self._try([CPU], "cpu", f"{CPU} (fault-injection stand-in for CUDA)")

    def close(self) -> None:
        """Stop the retry timer and the device thread; the path serves no more."""
        with self._lock:
            if self._retry is not None:
                self._retry.cancel()
            self.current = None
            self.pool = None  # its device memory goes with the last stream that holds a row
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    # --- fault injection (tests) -------------------------------------------------------
    def inject_oom(self, count: int) -> None:
        """The next ``count`` primary-path runs raise onnxruntime's OOM."""
        with self._lock:
            self._inject += count

    def take_injected_oom(self) -> None:
        """Raise the OOM a run should fail with, if one is injected (counted down)."""
        with self._lock:
            if self._inject <= 0:
                return
            self._inject -= 1
        raise RuntimeException(
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of "
            "memory; BFCArena::AllocateRawInternal (fault injection)"
        )

    # --- building ----------------------------------------------------------------------
    def _cuda_options(self) -> dict[str, str]:
        opts = {
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": self._config.cudnn_conv_algo_search,
            "cudnn_conv1d_pad_to_nc1d": "1",  # torch's Conv1d layout for cuDNN
        }
        if self._config.gpu_mem_limit:
            opts["gpu_mem_limit"] = str(self._config.gpu_mem_limit)
        return opts

    def _make(self, providers: list[Any], device: str, provider: str) -> Primary:
        """Sessions for :data:`PRIMARY_GRAPHS`; raises if a session cannot be made or does
        not run on ``provider``."""
        with self._lock:
            if self._init_failures > 0:
                self._init_failures -= 1
                raise RuntimeException(
                    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Exception during "
                    "initialization: BFCArena::AllocateRawInternal Failed to allocate memory "
                    "(fault injection)"
                )
        fixed = self._config.fixed_shapes
        fixed = provider == CUDA if fixed is None else fixed
        first = providers[0]
        expected = first if isinstance(first, str) else first[0]
        with self._lock:
            if self._worker is None:
                self._worker = DeviceWorker()
            worker = self._worker
        sessions: dict[str, ort.InferenceSession | dict[int, BoundSession]] = {}
        for name in PRIMARY_GRAPHS:
            path = self._graphs[name]
            if not fixed:
                sessions[name] = self._checked(path, providers, expected)
                continue
            sessions[name] = {
                key: worker.call(
                    lambda shape=shape, path=path: BoundSession(
                        self._checked(path, providers, expected), shape, device
                    )
                )
                for key, shape in self._fixed_shapes(name).items()
            }
        steps = None
        if self._stream is not None:
            spec = self._model.stream
            step_frames = spec.step_frames if spec is not None else ()
            steps = StepSessions(
                self._stream,
                lambda p: self._step_session(p, providers, expected),
                worker,
                device,
                batched_frames(step_frames),
                self._state_pool(worker, providers, expected, device),
            )
            if provider == CUDA:  # the shapes first requests and live sessions meet
                steps.warm(warm_shapes(step_frames, max_step_batch(self._config, device=True)))
        return Primary(sessions, worker, provider, steps, self._on_decoder_run)

    def _state_pool(
        self, worker: DeviceWorker, providers: list[Any], provider: str, device: str
    ) -> StatePool | None:
        """The streams' states on the device, made with the first primary and kept across
        rebuilds (state_pool.py). None: ``state_pool_mb`` leaves no row, or the device has
        not even a quarter of it free (the states then travel with each batch)."""
        spec = self._model.stream
        with self._lock:
            pool = self.pool
        if pool is not None or spec is None:
            return pool
        scratch = max_step_batch(self._config, device=True)

        def make(rows: int) -> StatePool:
            return StatePool(
                rows,
                scratch,
                spec.state_size,
                device,
                lambda path: self._checked(path, providers, provider, step_options(self._config)),
            )

        budget = self._config.state_pool_mb
        for mb in (budget, budget // 2, budget // 4):
            rows = pool_rows(spec.state_size, mb, scratch)
            if rows < 1:
                return None
            try:
                pool = worker.call(lambda rows=rows: make(rows))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                log.warning("no device memory for a %d MiB state pool: trying less", mb)
                continue
            with self._lock:
                self.pool = pool
            log.info("state pool: %d streams' states on the device (%d MiB)", rows, mb)
            return pool
        log.warning("no state pool: the streams' states travel with each batch")
        return None

    def host_states(self, states: Sequence[StreamState]) -> list[StreamState]:
        """``states`` with the pool's rows read into host arrays (for a CPU run)."""
        with self._lock:
            pool, worker = self.pool, self._worker
        if pool is None or not any(pool.owns(s) for s in states):
            return list(states)
        if worker is None:
            raise RuntimeError("the device path is closed: its streams' states are gone")
        return worker.call(lambda: pool.host_states(states))

    def _step_session(
        self, path: Path, providers: list[Any], provider: str
    ) -> ort.InferenceSession:
        """The streaming graph on ``provider``, single-threaded where it runs on CPU (a
        batched row then equals the same step alone, bit for bit: scheduler.py)."""
        return self._checked(path, providers, provider, step_options(self._config))

    def _fixed_shapes(self, name: str) -> dict[int, tuple[int, ...]]:
        m = self._model
        if name == "decoder":
            return {b: (b, m.latent_dim) for b in DECODER_BATCHES}
        return {t: (1, m.n_mels_voc, t) for t in vocoder_buckets(m.context_frames)}

    def _checked(
        self,
        path: Path,
        providers: list[Any],
        provider: str,
        opts: ort.SessionOptions | None = None,
    ) -> ort.InferenceSession:
        """A session of ``path`` (with ``opts``, else the engine's) that really runs on
        ``provider``."""
        opts = opts or session_options(self._config)
        session = ort.InferenceSession(str(path), opts, providers=providers)
        running = session.get_providers()[0]
        if running != provider:
            raise RuntimeError(
                f"onnxruntime runs {path.name} on {running}, not {provider} "
                "(it falls back silently when a CUDA library is missing)"
            )
        return session

    def _try(self, providers: list[Any], device: str, provider: str) -> None:
        try:
            primary = self._make(providers, device, provider)
        except Exception as exc:  # any init error leaves the server on CPU
            self._failed(f"primary sessions could not be created: {exc}", retry=True)
            return
        with self._lock:  # runners holding the old primary finish on it (same thread)
            self.current = primary
            self._retry_s = self._config.primary_retry_s
            if provider == CUDA or not self._config.use_cuda:  # the note was about this path
                self.note = ""
        log.info("primary path up on %s", provider)

    def _failed(self, reason: str, retry: bool) -> None:
        log.warning("%s; serving on CPU%s", reason, " (will retry)" if retry else "")
        with self._lock:
            self.note = reason
            if retry:
                self._retry = threading.Timer(self._retry_s, self.build)
                self._retry.daemon = True
                self._retry.start()
                self._retry_s = min(MAX_RETRY_S, 2 * self._retry_s)
        self._on_failure(reason)
