"""onnxruntime sessions for a bundle, with CUDA first and CPU on out-of-memory.

Concurrency: onnxruntime sessions are safe to ``run`` from many threads. ``Engine._lock``
guards only the swap of primary (CUDA) sessions during a rebuild and the fault-injection
counter; no run holds it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

from distill_serve.bundle import VOCODER_ROLES, Bundle, load_bundle
from distill_serve.server.model import ModelSpec
from distill_serve.server.resample import Polyphase

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
OOM_MARKERS = ("out of memory", "failed to allocate memory", "bfcarena", "alloc_failed")


@dataclass(frozen=True)
class EngineConfig:
    """Execution-provider options.

    Attributes:
        use_cuda: try the CUDA execution provider first.
        gpu_mem_limit: CUDA arena limit in bytes (None: onnxruntime's default).
        intra_op_threads: CPU threads per session (0: onnxruntime's default).
        fault_injection: build a primary path even without CUDA (on the CPU provider) so
            that :meth:`Engine.inject_oom` can exercise the fallback without a GPU.
        allow_spinning: let onnxruntime's idle worker threads spin. Off by default: the
            pipeline alternates between several sessions and numpy/scipy steps, and on two
            cores the spinning pools of one session starve the next (10 s requests took
            1.8-3.0 s with spinning, 1.8-2.3 s without, on the demo bundle).
        vocoder_precision: "fp32" (the exported graph) or "int8" (the bundle's
            ``vocoder_int8`` graph from ``distill-serve export --int8``).
    """

    use_cuda: bool = True
    gpu_mem_limit: int | None = None
    intra_op_threads: int = 0
    fault_injection: bool = False
    allow_spinning: bool = False
    vocoder_precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.vocoder_precision not in VOCODER_ROLES:
            raise ValueError(
                f"vocoder_precision must be one of {sorted(VOCODER_ROLES)}, "
                f"got {self.vocoder_precision!r}"
            )


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an onnxruntime error is a device out-of-memory."""
    text = str(exc).lower()
    return any(marker in text for marker in OOM_MARKERS)


class _Graph:
    """One graph: a primary session (CUDA, or a stand-in under fault injection) and CPU."""

    def __init__(self, path: Path, cpu: ort.InferenceSession) -> None:
        self.path = path
        self.cpu = cpu
        self.primary: ort.InferenceSession | None = None
        self.input_names = [i.name for i in cpu.get_inputs()]


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
        self._lock = threading.Lock()
        self._inject = 0
        self._graphs: dict[str, _Graph] = {}
        roles = {
            "decoder": "decoder",
            "bridge": "bridge",
            "vocoder": VOCODER_ROLES[self.config.vocoder_precision],
        }
        for name, role in roles.items():
            self._graphs[name] = self._load(bundle.graph(role))
        for rate in self.model.resamplers:
            self._graphs[f"resampler:{rate}"] = self._load(bundle.graph("resampler", rate=rate))
        self.primary_provider = self._build_primary()

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

    def _install_primary(self, sessions: dict[str, ort.InferenceSession]) -> None:
        with self._lock:
            for name, session in sessions.items():
                self._graphs[name].primary = session

    def _cuda_wanted(self) -> bool:
        return self.config.use_cuda and CUDA in ort.get_available_providers()

    def _build_primary(self) -> str:
        """(Re)build the primary sessions; returns the provider really in use."""
        if self._cuda_wanted():
            cuda_opts: dict[str, str] = {"arena_extend_strategy": "kSameAsRequested"}
            if self.config.gpu_mem_limit:
                cuda_opts["gpu_mem_limit"] = str(self.config.gpu_mem_limit)
            sessions: dict[str, ort.InferenceSession] = {}
            for name, graph in self._graphs.items():
                session = self._session(graph.path, [(CUDA, cuda_opts), CPU])
                if session.get_providers()[0] != CUDA:
                    log.warning(
                        "CUDA was requested but onnxruntime runs %s on %s (CUDA 13 / cuDNN 9 "
                        "libraries missing? install distill-serve[cuda]); serving on CPU",
                        graph.path.name,
                        session.get_providers()[0],
                    )
                    sessions = {}
                    break
                sessions[name] = session
            if sessions:
                self._install_primary(sessions)
                return CUDA
        if self.config.fault_injection:
            self._install_primary(
                {name: self._session(g.path, [CPU]) for name, g in self._graphs.items()}
            )
            return f"{CPU} (fault-injection stand-in for CUDA)"
        return CPU

    @property
    def has_primary(self) -> bool:
        return self._graphs["vocoder"].primary is not None

    def rebuild_primary(self) -> None:
        """Recreate the CUDA sessions: after an OOM the BFC arena can stay broken."""
        log.info("rebuilding primary (%s) sessions", self.primary_provider)
        self._build_primary()

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


class RequestRunner:
    """Runs graphs for one request: primary first, CPU for the rest after an OOM."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.on_primary = engine.has_primary
        self.fallbacks = 0

    @property
    def provider(self) -> str:
        return self._engine.primary_provider if self.on_primary else CPU

    def _run(self, name: str, *inputs: np.ndarray) -> np.ndarray:
        graph = self._engine.graph(name)
        feeds = dict(zip(graph.input_names, inputs, strict=True))
        primary = graph.primary
        if self.on_primary and primary is not None:
            try:
                if self._engine._take_injection():
                    raise RuntimeException(
                        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of "
                        "memory; BFCArena::AllocateRawInternal (fault injection)"
                    )
                return np.asarray(primary.run(None, feeds)[0])
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self.on_primary = False
                self.fallbacks += 1
                self._engine.report_fallback(name, exc)
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
