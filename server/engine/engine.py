"""onnxruntime sessions for a bundle, with CUDA first and CPU on out-of-memory.

Every graph has a CPU session, always ready. The primary path (:class:`_Primary`) holds the
GPU sessions of the decoder and vocoder (or, under fault injection, CPU stand-ins for them);
:mod:`distill_serve.server.engine.cuda` says why it is shaped as it is (fixed shapes, one owner
thread, IO binding). A primary path that cannot be built leaves the engine serving on CPU,
says why (:attr:`Engine.provider_note`), and is retried every ``primary_retry_s``.

Concurrency: CPU sessions are ``run`` from many threads; primary sessions only from the
primary's :class:`~distill_serve.server.engine.cuda.DeviceWorker` thread. ``Engine._lock`` guards
the swap of the primary path, the retry timer and the fault-injection counters; no run
holds it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

from distill_serve.bundle import (
    STREAM_OPEN_END,
    VOCODER_ROLES,
    Bundle,
    BundleError,
    load_bundle,
)
from distill_serve.isa import cpu_kind, int8_mismatch
from distill_serve.server.engine.cuda import (
    CUDA,
    DECODER_BATCHES,
    BoundSession,
    DeviceWorker,
    cuda_unavailable_reason,
    vocoder_buckets,
)
from distill_serve.server.engine.scheduler import Step, StepScheduler
from distill_serve.server.pipeline.model import ModelSpec, StreamSpec
from distill_serve.server.pipeline.resample import Polyphase

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
OOM_MARKERS = ("out of memory", "failed to allocate memory", "bfcarena", "alloc_failed")
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
#: Graphs the primary path runs; the bridge and resamplers stay on CPU (see server/engine/cuda.py).
PRIMARY_GRAPHS = ("decoder", "vocoder")
MAX_RETRY_S = 600.0
VOCODER_PATHS = ("auto", "block", "stream")
#: Live capacity estimate: steps per batch when timing the streaming graph at start, and the
#: share of the cores' time the graph may take. Batch 1: live sessions' steps rarely fall due
#: together (the scheduler formed 1.12-1.18 steps per run with 2-5 sessions, 2026-12-02), and
#: the batch-8 cost overestimated (11 admitted on the stand-in, 4 held). 0.75: the stand-in
#: held 4 sessions with the graph at 60 % of two cores and underran at 5 (73 %); the demo
#: held 2 at 75 % (benchmarks/results/cpu-2core-zen4-stream.json).
CAPACITY_BATCH = 1
CAPACITY_SHARE = 0.75
CAPACITY_RUNS = 12


@dataclass(frozen=True)
class EngineConfig:
    """Execution-provider options.

    Attributes:
        use_cuda: try the CUDA execution provider first.
        gpu_mem_limit: CUDA arena limit in bytes (None: onnxruntime's default).
        intra_op_threads: CPU threads per session (0: onnxruntime's default).
        fault_injection: build a primary path even without CUDA (on the CPU provider) so
            that :meth:`Engine.inject_oom` and ``inject_init_failures`` can exercise the
            fallbacks without a GPU.
        allow_spinning: let onnxruntime's idle worker threads spin. Off by default: the
            pipeline alternates between several sessions and numpy/scipy steps, and on two
            cores the spinning pools of one session starve the next (10 s requests took
            1.8-3.0 s with spinning, 1.8-2.3 s without, on the demo bundle).
        vocoder_precision: "fp32" (the exported graph) or "int8" (the bundle's
            ``vocoder_int8`` graph from ``distill-serve export --int8``).
        fixed_shapes: primary sessions per fixed shape (server/engine/cuda.py); None: on for CUDA,
            off for the fault-injection stand-in (whose audio then equals the CPU path's).
        cudnn_conv_algo_search: onnxruntime's cuDNN algorithm search (EXHAUSTIVE, HEURISTIC
            or DEFAULT); HEURISTIC is the cheapest that still picks fast kernels.
        primary_retry_s: how long to wait before building a failed primary path again
            (doubling up to 10 minutes).
        inject_init_failures: testing: the first N primary builds fail as a CUDA arena out of
            memory at session creation would (needs ``fault_injection``).
        vocoder_path: "stream" (the bundle's streaming vocoder graph, fed by the step
            scheduler: each frame vocoded once, steps of concurrent generations batched;
            ``server/engine/scheduler.py``), "block" (the whole-clip graph on blocks with context on
            both sides), or "auto": stream when the bundle has the graph, the precision is
            fp32 and no CUDA path is up (the GPU keeps its fixed-shape block sessions).
        live_capacity: live sessions admitted at once on the stream path: None (default)
            measures it from the step graph's cost at start, N fixes it, 0 admits without
            limit (e.g. to measure where sessions really start to underrun).
    """

    use_cuda: bool = True
    gpu_mem_limit: int | None = None
    intra_op_threads: int = 0
    fault_injection: bool = False
    allow_spinning: bool = False
    vocoder_precision: str = "fp32"
    fixed_shapes: bool | None = None
    cudnn_conv_algo_search: str = "HEURISTIC"
    primary_retry_s: float = 60.0
    inject_init_failures: int = 0
    vocoder_path: str = "auto"
    live_capacity: int | None = None

    def __post_init__(self) -> None:
        if self.live_capacity is not None and self.live_capacity < 0:
            raise ValueError(f"live_capacity must be >= 0 or None, got {self.live_capacity}")
        if self.vocoder_path not in VOCODER_PATHS:
            raise ValueError(
                f"vocoder_path must be one of {list(VOCODER_PATHS)}, got {self.vocoder_path!r}"
            )
        if self.vocoder_path == "stream" and self.vocoder_precision != "fp32":
            raise ValueError(
                "the streaming vocoder graph is fp32: --vocoder-path stream needs "
                "--vocoder-precision fp32 (int8 and fp16 serve with --vocoder-path block)"
            )
        if self.vocoder_precision not in VOCODER_ROLES:
            raise ValueError(
                f"vocoder_precision must be one of {sorted(VOCODER_ROLES)}, "
                f"got {self.vocoder_precision!r}"
            )
        if self.cudnn_conv_algo_search not in CONV_ALGO_SEARCH:
            raise ValueError(
                f"cudnn_conv_algo_search must be one of {list(CONV_ALGO_SEARCH)}, "
                f"got {self.cudnn_conv_algo_search!r}"
            )
        if self.inject_init_failures and not self.fault_injection:
            raise ValueError("inject_init_failures needs fault_injection=True")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an onnxruntime error is a device out-of-memory."""
    text = str(exc).lower()
    return any(marker in text for marker in OOM_MARKERS)


class _Graph:
    """One graph: its file and its CPU session."""

    def __init__(self, path: Path, cpu: ort.InferenceSession) -> None:
        self.path = path
        self.cpu = cpu
        self.input_names = [i.name for i in cpu.get_inputs()]


class _Primary:
    """The decoder and vocoder on the primary provider, run by one device thread.

    With fixed shapes there is one IO-bound session per decoder batch size and per vocoder
    window length; otherwise one session per graph with dynamic shapes.
    """

    def __init__(
        self,
        sessions: dict[str, ort.InferenceSession | dict[int, BoundSession]],
        worker: DeviceWorker,
        provider: str,
    ) -> None:
        self._sessions = sessions
        self._worker = worker
        self.provider = provider

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
        sessions = self._sessions[name]
        if not isinstance(sessions, dict):
            session = sessions
            feed = {session.get_inputs()[0].name: x}
            return self._worker.call(lambda: np.asarray(session.run(None, feed)[0]))
        if name == "decoder":
            n = x.shape[0]
            batch = next(b for b in sorted(sessions) if b >= n)
            padded = np.zeros((batch, *x.shape[1:]), np.float32)
            padded[:n] = x
            return self._worker.call(lambda: sessions[batch].run(padded))[:n]
        bound = sessions[x.shape[2]]
        return self._worker.call(lambda: bound.run(x))


class Engine:
    """Sessions for the decoder, bridge, vocoder and resamplers of one bundle."""

    def __init__(
        self,
        bundle: Bundle,
        config: EngineConfig | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.bundle = bundle
        self.config = config or EngineConfig()
        self.model = ModelSpec.from_bundle(bundle)
        #: called with the graph name on each CUDA out-of-memory fallback (a server counts them)
        self.on_fallback = on_fallback
        #: called with the reason each time the primary path cannot be built
        self.on_primary_failure: Callable[[str], None] | None = None
        #: why CUDA is not serving although it was wanted ("" when it is, or was not wanted)
        self.provider_note = ""
        self._lock = threading.Lock()
        self._closed = False
        self._inject = 0
        self._init_failures = self.config.inject_init_failures
        self._retry: threading.Timer | None = None
        self._retry_s = self.config.primary_retry_s
        self._primary: _Primary | None = None
        self._worker: DeviceWorker | None = None  # the device's thread, made with the primary
        self._graphs: dict[str, _Graph] = {}
        roles = {
            "decoder": "decoder",
            "bridge": "bridge",
            "vocoder": VOCODER_ROLES[self.config.vocoder_precision],
        }
        for name, role in roles.items():
            self._graphs[name] = self._load(bundle.graph(role))
        #: why the int8 vocoder's recorded parity may not hold on this CPU ("" when it does)
        self.precision_note = ""
        if self.config.vocoder_precision == "int8":
            parity = bundle.manifest.get("parity", {}).get(self._graphs["vocoder"].path.name)
            self.precision_note = int8_mismatch(parity, cpu_kind()) or ""
            if self.precision_note:
                log.warning("%s", self.precision_note)
        for rate in self.model.resamplers:
            self._graphs[f"resampler:{rate}"] = self._load(bundle.graph("resampler", rate=rate))
        #: the step scheduler of the streaming vocoder (None: the block path serves)
        self.scheduler: StepScheduler | None = None
        #: live sessions it admits at once: measured at start, or the config's (0: no limit)
        self.live_capacity = 0
        if self._wants_stream():
            # One session, run from one scheduler loop per core: a single-threaded session
            # runs on its caller's thread, and onnxruntime's Run is thread-safe.
            runners = [self._step_runner(bundle.graph("vocoder_stream"))] * self._workers()
            self.scheduler = StepScheduler(runners)
            fixed = self.config.live_capacity
            self.live_capacity = self._measure_live_capacity(runners) if fixed is None else fixed
        self._build_primary()
        log.info(
            "vocoder path: %s%s",
            self.vocoder_path,
            f" (live capacity {self.live_capacity} sessions)" if self.live_capacity else "",
        )

    def _measure_live_capacity(self, runners: list[Callable[..., Any]]) -> int:
        """Live sessions this engine can keep in real time: the streaming graph's cost per
        frame on :data:`CAPACITY_BATCH` 8-frame step (the live step), :data:`CAPACITY_RUNS`
        runs on every runner at once, against the frames per second a session needs, times
        :data:`CAPACITY_SHARE` (what is left is for serving: decoder, bridge,
        post-processing, gRPC, and for the steps' queueing)."""
        m, spec = self.model, self.model.stream
        assert spec is not None
        b, frames = CAPACITY_BATCH, 8
        mel = np.full((b, m.n_mels_voc, frames), -5.0, np.float32)
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
        needed = m.vocoder_rate / m.geometry.vocoder_hop  # frames per second per session
        return max(1, int(CAPACITY_SHARE / (per_frame * needed)))

    def _wants_stream(self) -> bool:
        """Decided from the config and the machine, before any primary path is built: auto
        streams unless a CUDA path will serve (a GPU, or the fault-injection stand-in)."""
        c = self.config
        has = self.model.stream is not None
        if c.vocoder_path == "stream" and not has:
            raise BundleError(
                f"{self.bundle.root}: no streaming vocoder graph (vocoder_stream); re-export "
                "the bundle with this distill-serve, or serve with --vocoder-path block"
            )
        if c.vocoder_path == "auto":
            cuda = c.use_cuda and cuda_unavailable_reason() is None
            return has and c.vocoder_precision == "fp32" and not cuda and not c.fault_injection
        return c.vocoder_path == "stream"

    def _workers(self) -> int:
        """Step sessions (one scheduler loop each): one per core the engine may use."""
        return self.config.intra_op_threads or os.cpu_count() or 1

    def _step_runner(self, path: Path) -> Callable[..., Any]:
        """A single-threaded session of the streaming graph as a batch runner (single-threaded
        so that a batched row equals the same step alone, bit for bit: server/engine/scheduler.py;
        several threads may run it at once, each on its own thread)."""
        opts = self._options()
        opts.intra_op_num_threads = 1
        # onnxruntime's buffer-reuse planner is superlinear in a graph's dynamically shaped
        # values: 8 s to open the stand-in's step graph with it, 1.6 s without, and no
        # measurable change in step time or output (the arena still recycles memory).
        opts.enable_mem_reuse = False
        session = ort.InferenceSession(str(path), opts, providers=[CPU])
        # graphs exported before the ``end`` input (manifest without tail_frames) lack it
        takes_end = "end" in {i.name for i in session.get_inputs()}

        def run(mel: np.ndarray, position: np.ndarray, end: np.ndarray, state: np.ndarray) -> Any:
            feed = {"mel": mel, "position": position, "state": state}
            if takes_end:
                feed["end"] = end
            audio, new = session.run(None, feed)
            return audio, new

        return run

    @property
    def vocoder_path(self) -> str:
        """ "stream" or "block": what new requests on CPU use (a request on the CUDA path
        always vocodes blocks)."""
        return "stream" if self.scheduler is not None else "block"

    @classmethod
    def from_dir(
        cls,
        root: str | Path,
        config: EngineConfig | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> Engine:
        return cls(load_bundle(root), config, on_fallback)

    @property
    def vocoder_precision(self) -> str:
        return self.config.vocoder_precision

    @property
    def primary_provider(self) -> str:
        """The provider the primary path really runs on (CPU when there is none)."""
        primary = self._primary
        return primary.provider if primary is not None else CPU

    # --- sessions ----------------------------------------------------------------------
    def _options(self) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.config.intra_op_threads:
            opts.intra_op_num_threads = self.config.intra_op_threads
        spin = "1" if self.config.allow_spinning else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        return opts

    def _session(self, path: Path, providers: list[Any]) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), self._options(), providers=providers)

    def _load(self, path: Path) -> _Graph:
        return _Graph(path, self._session(path, [CPU]))

    def _cuda_options(self) -> dict[str, str]:
        opts = {
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": self.config.cudnn_conv_algo_search,
            "cudnn_conv1d_pad_to_nc1d": "1",  # torch's Conv1d layout for cuDNN
        }
        if self.config.gpu_mem_limit:
            opts["gpu_mem_limit"] = str(self.config.gpu_mem_limit)
        return opts

    def _make_primary(self, providers: list[Any], device: str, provider: str) -> _Primary:
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
        fixed = self.config.fixed_shapes
        fixed = provider == CUDA if fixed is None else fixed
        first = providers[0]
        expected = first if isinstance(first, str) else first[0]
        with self._lock:
            if self._worker is None:
                self._worker = DeviceWorker()
            worker = self._worker
        sessions: dict[str, ort.InferenceSession | dict[int, BoundSession]] = {}
        for name in PRIMARY_GRAPHS:
            path = self._graphs[name].path
            if not fixed:
                sessions[name] = self._checked(path, providers, expected)
                continue
            shapes = self._fixed_shapes(name)
            sessions[name] = {
                key: worker.call(
                    lambda shape=shape, path=path: BoundSession(
                        self._checked(path, providers, expected), shape, device
                    )
                )
                for key, shape in shapes.items()
            }
        return _Primary(sessions, worker, provider)

    def _fixed_shapes(self, name: str) -> dict[int, tuple[int, ...]]:
        m = self.model
        if name == "decoder":
            return {b: (b, m.latent_dim) for b in DECODER_BATCHES}
        return {t: (1, m.n_mels_voc, t) for t in vocoder_buckets(m.context_frames)}

    def _checked(self, path: Path, providers: list[Any], provider: str) -> ort.InferenceSession:
        session = self._session(path, providers)
        running = session.get_providers()[0]
        if running != provider:
            raise RuntimeError(
                f"onnxruntime runs {path.name} on {running}, not {provider} "
                "(it falls back silently when a CUDA library is missing)"
            )
        return session

    def _build_primary(self) -> None:
        """(Re)build the primary path; on failure serve on CPU, say why and retry later."""
        if self.config.use_cuda:
            reason = cuda_unavailable_reason()
            if reason is not None:  # no driver, no provider, missing libraries: no retry
                self._primary_failed(f"CUDA unavailable: {reason}", retry=False)
                if not self.config.fault_injection:
                    return
            else:
                self._try_primary([(CUDA, self._cuda_options()), CPU], "cuda", CUDA)
                return
        if self.config.fault_injection:
            self._try_primary([CPU], "cpu", f"{CPU} (fault-injection stand-in for CUDA)")

    def _try_primary(self, providers: list[Any], device: str, provider: str) -> None:
        try:
            primary = self._make_primary(providers, device, provider)
        except Exception as exc:  # any init error leaves the server on CPU
            self._primary_failed(f"primary sessions could not be created: {exc}", retry=True)
            return
        with self._lock:  # runners holding the old primary finish on it (same thread)
            self._primary = primary
            self._retry_s = self.config.primary_retry_s
            if provider == CUDA or not self.config.use_cuda:  # the note was about this path
                self.provider_note = ""
        log.info("primary path up on %s", provider)

    def _primary_failed(self, reason: str, retry: bool) -> None:
        log.warning("%s; serving on CPU%s", reason, " (will retry)" if retry else "")
        with self._lock:
            self.provider_note = reason
            if retry:
                self._retry = threading.Timer(self._retry_s, self._build_primary)
                self._retry.daemon = True
                self._retry.start()
                self._retry_s = min(MAX_RETRY_S, 2 * self._retry_s)
        if self.on_primary_failure is not None:
            self.on_primary_failure(reason)

    @property
    def has_primary(self) -> bool:
        return self._primary is not None

    def rebuild_primary(self) -> None:
        """Recreate the primary sessions: after an OOM the BFC arena can stay broken."""
        log.info("rebuilding primary (%s) sessions", self.primary_provider)
        self._build_primary()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (the CPU path still works; the device path is gone)."""
        return self._closed

    def close(self) -> None:
        """Stop the retry timer, the device thread and the step scheduler."""
        self._closed = True
        if self.scheduler is not None:
            self.scheduler.close()
        with self._lock:
            if self._retry is not None:
                self._retry.cancel()
            self._primary = None
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def inject_oom(self, count: int = 1) -> None:
        """Fault injection: the next ``count`` primary-path runs raise onnxruntime's OOM."""
        if not self.has_primary:
            raise RuntimeError("no primary path: start the engine with fault_injection=True")
        with self._lock:
            self._inject += count

    def _take_injection(self) -> bool:
        with self._lock:
            if self._inject > 0:
                self._inject -= 1
                return True
            return False

    def runner(self) -> RequestRunner:
        """A runner for one request (it stays on CPU once that request fell back)."""
        return RequestRunner(self)

    def report_fallback(self, graph: str, exc: BaseException) -> None:
        log.warning("CUDA out of memory in %s (%s); rerunning on CPU", graph, str(exc)[:200])
        if self.on_fallback is not None:
            self.on_fallback(graph)
        threading.Thread(target=self.rebuild_primary, name="rebuild-cuda", daemon=True).start()

    def graph(self, name: str) -> _Graph:
        return self._graphs[name]

    @property
    def primary(self) -> _Primary | None:
        return self._primary


class RequestRunner:
    """Runs graphs for one request: primary first, CPU for the rest after an OOM."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._primary = engine.primary  # a rebuild mid-request does not switch sessions
        self.on_primary = self._primary is not None
        self.fallbacks = 0

    @property
    def provider(self) -> str:
        return self._primary.provider if self.on_primary and self._primary else CPU

    @property
    def vocoder_buckets(self) -> tuple[int, ...]:
        """Window lengths the vocoder should get (empty: any length)."""
        return self._primary.vocoder_buckets if self.on_primary and self._primary else ()

    @property
    def stream_spec(self) -> StreamSpec | None:
        """The streaming vocoder's layout when this request streams (None: blocks)."""
        if self._engine.scheduler is None or (self.on_primary and self._primary is not None):
            return None
        return self._engine.model.stream

    def stream_steps(self, steps: list[Step]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run streaming-vocoder steps through the engine's scheduler (batched with other
        generations' steps); each gives ``(audio (S * hop,), state (N,))``."""
        scheduler = self._engine.scheduler
        if scheduler is None:
            raise RuntimeError("this engine serves the block vocoder path")
        return scheduler.run(steps)

    def _run(self, name: str, *inputs: np.ndarray) -> np.ndarray:
        graph = self._engine.graph(name)
        primary = self._primary
        if self.on_primary and primary is not None and primary.serves(name, inputs[0]):
            try:
                if self._engine._take_injection():
                    raise RuntimeException(
                        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of "
                        "memory; BFCArena::AllocateRawInternal (fault injection)"
                    )
                return primary.run(name, inputs[0])
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self.on_primary = False
                self.fallbacks += 1
                self._engine.report_fallback(name, exc)
        feeds = dict(zip(graph.input_names, inputs, strict=True))
        return np.asarray(graph.cpu.run(None, feeds)[0])

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self._run("decoder", z.astype(np.float32))

    def bridge(self, mel: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self._run("bridge", mel.astype(np.float32), positions.astype(np.float32))

    def vocode(self, mel: np.ndarray) -> np.ndarray:
        return self._run("vocoder", np.ascontiguousarray(mel, dtype=np.float32)).reshape(-1)

    def polyphase(self, rate: int) -> Polyphase:
        name = f"resampler:{rate}"
        return lambda x: self._run(name, x)
