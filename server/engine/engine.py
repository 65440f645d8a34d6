"""onnxruntime sessions for a bundle, with CUDA first and CPU on out-of-memory.

Every graph has a CPU session, always ready (:class:`~distill_serve.server.engine.sessions.
Graph`). The primary path (``primary.py``) holds the GPU sessions of the decoder and vocoder
(or, under fault injection, CPU stand-ins for them); a primary path that cannot be built
leaves the engine serving on CPU and says why (:attr:`Engine.provider_note`). With the
bundle's streaming vocoder graph, the engine's step scheduler (``scheduler.py``) runs every
generation's vocoder steps: on CPU, one loop per core; with a primary path, one loop whose
batches run on the device worker (``device_steps.py``), the CPU re-running a batch the device
has no memory for.

Concurrency: CPU sessions are ``run`` from many threads; primary sessions only from the
primary's device thread (``primary.py`` says what its lock guards).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from distill_serve.bundle import VOCODER_ROLES, Bundle, BundleError, load_bundle
from distill_serve.isa import cpu_kind, int8_mismatch
from distill_serve.server.engine.capacity import LiveCapacity, live_capacity
from distill_serve.server.engine.config import CPU, EngineConfig
from distill_serve.server.engine.cuda import cuda_unavailable_reason
from distill_serve.server.engine.primary import (
    PRIMARY_GRAPHS,
    Primary,
    PrimaryPath,
    is_out_of_memory,
)
from distill_serve.server.engine.runner import RequestRunner
from distill_serve.server.engine.scheduler import StepScheduler
from distill_serve.server.engine.sessions import Graph, step_runner
from distill_serve.server.engine.state_pool import PoolStats
from distill_serve.server.engine.step_costs import max_step_batch, measure_step_costs
from distill_serve.server.pipeline.model import ModelSpec
from distill_serve.server.pipeline.runner import StreamState

log = logging.getLogger(__name__)


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
        #: called with the generations whose decoder rows shared each device run
        self.on_decoder_run: Callable[[int], None] | None = None
        self._closed = False
        roles = {
            "decoder": "decoder",
            "bridge": "bridge",
            "vocoder": VOCODER_ROLES[self.config.vocoder_precision],
        }
        self._graphs = {
            name: Graph(bundle.graph(role), self.config) for name, role in roles.items()
        }
        #: why the int8 vocoder's recorded parity may not hold on this CPU ("" when it does)
        self.precision_note = ""
        if self.config.vocoder_precision == "int8":
            parity = bundle.manifest.get("parity", {}).get(self._graphs["vocoder"].path.name)
            self.precision_note = int8_mismatch(parity, cpu_kind()) or ""
            if self.precision_note:
                log.warning("%s", self.precision_note)
        for rate in self.model.resamplers:
            path = bundle.graph("resampler", rate=rate)
            self._graphs[f"resampler:{rate}"] = Graph(path, self.config)
        stream = self._wants_stream()
        self._device = self._wants_device()
        self.primary_path = PrimaryPath(
            self.config,
            self.model,
            {name: self._graphs[name].path for name in PRIMARY_GRAPHS},
            self._primary_failed,
            stream=bundle.graph("vocoder_stream") if stream and self._device else None,
            on_decoder_run=self._decoder_ran,
        )
        if stream:  # opened before the primary is built: its retry timer starts after this
            self._cpu_steps = step_runner(bundle.graph("vocoder_stream"), self.config)
        self.primary_path.build()
        #: the step scheduler of the streaming vocoder (None: the block path serves)
        self.scheduler: StepScheduler | None = None
        #: the live sessions it admits (None: no stream path, no limit)
        self.capacity: LiveCapacity | None = None
        #: step batches the primary path failed for memory and the CPU re-ran
        self.step_fallbacks = 0
        if stream:
            # CPU: one single-threaded session, run from one scheduler loop per core (it runs
            # on its caller's thread, and onnxruntime's Run is thread-safe). A primary path
            # (CUDA): one loop, whose batches run on the device worker (device_steps.py).
            runners = [self._device_steps] if self._device else [self._cpu_steps] * self._workers()
            fixed = self.config.live_capacity
            # CPU: unbatched unless configured (step_costs.py says why); the device: 32
            batch = max_step_batch(self.config, self._device)
            self.scheduler = StepScheduler(runners, max_batch=batch)
            if fixed is None:  # measured at start, then following what serving measures
                costs = measure_step_costs(self.model, runners)
                self.capacity = live_capacity(self.model, len(runners), costs)
                self.scheduler.on_frames = self.capacity.observe
            else:
                self.capacity = LiveCapacity(0.0, len(runners), 0.0, fixed=fixed)
        log.info("vocoder path: %s%s", self.vocoder_path, self._path_note())

    @classmethod
    def from_dir(
        cls,
        root: str | Path,
        config: EngineConfig | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> Engine:
        return cls(load_bundle(root), config, on_fallback)

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
        if c.vocoder_path == "auto":  # on CUDA too: the steps batch on the device worker
            return has and c.vocoder_precision == "fp32"
        return c.vocoder_path == "stream"

    def _wants_device(self) -> bool:
        """Whether a primary path is wanted: CUDA that can load, or its fault-injection
        stand-in."""
        c = self.config
        return (c.use_cuda and cuda_unavailable_reason() is None) or c.fault_injection

    def _device_steps(
        self, mel: np.ndarray, position: np.ndarray, end: np.ndarray, states: Sequence[StreamState]
    ) -> tuple[np.ndarray, Sequence[StreamState]]:
        """A step batch on the primary path (the scheduler's runner on a CUDA engine); on a
        device out-of-memory the same batch on CPU (its audio exact, the fallback counted,
        the primary rebuilt), and on CPU while there is no primary path."""
        primary = self.primary_path.current
        if primary is not None and primary.steps is not None:
            try:
                self.primary_path.take_injected_oom()
                return primary.steps.run(mel, position, end, states)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self.step_fallbacks += 1
                self.report_fallback("vocoder_stream", exc)
        # the CPU's new host states give back the rows (the streams claim one again later)
        return self._cpu_steps(mel, position, end, self.primary_path.host_states(states))

    def _path_note(self) -> str:
        """The stream path's live capacity and step batches, for the start log."""
        if self.scheduler is None:
            return ""
        parts = [f"live capacity {self.live_capacity} sessions"] if self.live_capacity else []
        parts.append(f"step batches up to {self.scheduler.batch_sizes[-1]}")
        return f" ({'; '.join(parts)})"

    def _workers(self) -> int:
        """Step sessions (one scheduler loop each): one per core the engine may use."""
        return self.config.intra_op_threads or os.cpu_count() or 1

    def _primary_failed(self, reason: str) -> None:
        if self.on_primary_failure is not None:
            self.on_primary_failure(reason)

    def _decoder_ran(self, generations: int) -> None:
        if self.on_decoder_run is not None:
            self.on_decoder_run(generations)

    # --- what the server and the runners see ---------------------------------------------
    @property
    def vocoder_path(self) -> str:
        """ "stream" (the streaming graph's steps through the scheduler, on CPU or the
        device) or "block" (the whole-clip graph on blocks)."""
        return "stream" if self.scheduler is not None else "block"

    @property
    def live_capacity(self) -> int:
        """Live sessions admitted at once now (0: no limit): the configured figure, or the
        estimate that follows the step costs measured while serving (capacity.py)."""
        return self.capacity.sessions if self.capacity is not None else 0

    @property
    def vocoder_precision(self) -> str:
        return self.config.vocoder_precision

    @property
    def primary(self) -> Primary | None:
        return self.primary_path.current

    @property
    def has_primary(self) -> bool:
        return self.primary is not None

    @property
    def primary_provider(self) -> str:
        """The provider the primary path really runs on (CPU when there is none)."""
        primary = self.primary
        return primary.provider if primary is not None else CPU

    @property
    def provider_note(self) -> str:
        """Why CUDA is not serving although it was wanted ("" when it is, or was not)."""
        return self.primary_path.note

    def state_pool_stats(self) -> PoolStats | None:
        """How the device path's state pool is used (None: no pool)."""
        pool = self.primary_path.pool
        return pool.stats() if pool is not None else None

    def graph(self, name: str) -> Graph:
        return self._graphs[name]

    def runner(self) -> RequestRunner:
        """A runner for one request (it stays on CPU once that request fell back)."""
        return RequestRunner(
            self._graphs,
            self.primary_path,
            self.scheduler,
            self.model.stream,
            self.report_fallback,
            fixed_step_shapes=self._device,
        )

    def report_fallback(self, graph: str, exc: BaseException) -> None:
        log.warning("CUDA out of memory in %s (%s); rerunning on CPU", graph, str(exc)[:200])
        if self.on_fallback is not None:
            self.on_fallback(graph)
        threading.Thread(target=self.rebuild_primary, name="rebuild-cuda", daemon=True).start()

    def rebuild_primary(self) -> None:
        """Recreate the primary sessions: after an OOM the BFC arena can stay broken."""
        log.info("rebuilding primary (%s) sessions", self.primary_provider)
        self.primary_path.build()

    def inject_oom(self, count: int = 1) -> None:
        """Fault injection: the next ``count`` primary-path runs raise onnxruntime's OOM."""
        if not self.has_primary:
            raise RuntimeError("no primary path: start the engine with fault_injection=True")
        self.primary_path.inject_oom(count)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (the CPU path still works; the device path is gone)."""
        return self._closed

    def close(self) -> None:
        """Stop the retry timer, the device thread and the step scheduler."""
        self._closed = True
        if self.scheduler is not None:
            self.scheduler.close()
        self.primary_path.close()
