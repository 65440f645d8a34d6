"""The pipeline's runner port on the engine: one generation's graph runs, primary path first
and CPU for the rest of the generation after an out-of-memory."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from distill_serve.server.engine.config import CPU
from distill_serve.server.engine.primary import Primary, PrimaryPath, is_out_of_memory
from distill_serve.server.engine.scheduler import StepScheduler
from distill_serve.server.engine.sessions import Graph
from distill_serve.server.pipeline.model import StreamSpec
from distill_serve.server.pipeline.resample import Polyphase
from distill_serve.server.pipeline.runner import Step, StreamState


class RequestRunner:
    """Runs graphs for one request: primary first, CPU for the rest after an OOM
    (implements :class:`distill_serve.server.pipeline.runner.Runner`).

    The engine (``Engine.runner``) hands it its CPU ``graphs``, the ``primary_path`` (whose
    current primary it keeps for the whole request: a rebuild mid-request does not switch
    sessions), the step ``scheduler`` and streaming layout (None: blocks), and
    ``on_fallback(graph, exc)`` for each out-of-memory fallback.
    """

    def __init__(
        self,
        graphs: Mapping[str, Graph],
        primary_path: PrimaryPath,
        scheduler: StepScheduler | None,
        stream: StreamSpec | None,
        on_fallback: Callable[[str, BaseException], None],
        fixed_step_shapes: bool = False,
    ) -> None:
        self._graphs = graphs
        self._faults = primary_path
        self._primary: Primary | None = primary_path.current
        self._scheduler = scheduler
        self._stream = stream
        self._on_fallback = on_fallback
        self.on_primary = self._primary is not None
        self.fallbacks = 0
        #: the scheduler's steps run on the device path's fixed-shape sessions
        self.fixed_step_shapes = fixed_step_shapes

    @property
    def provider(self) -> str:
        return self._primary.provider if self.on_primary and self._primary else CPU

    @property
    def vocoder_buckets(self) -> tuple[int, ...]:
        """Window lengths the vocoder should get (empty: any length)."""
        return self._primary.vocoder_buckets if self.on_primary and self._primary else ()

    @property
    def stream_spec(self) -> StreamSpec | None:
        """The streaming vocoder's layout when this request streams (None: blocks). Its steps
        run where the engine's scheduler runs them: on the device, or on CPU."""
        return None if self._scheduler is None else self._stream

    def stream_steps(self, steps: list[Step]) -> list[tuple[np.ndarray, StreamState]]:
        """Run streaming-vocoder steps through the engine's scheduler (batched with other
        generations' steps); each gives ``(audio (S * hop,), the stream's next state)``."""
        if self._scheduler is None:
            raise RuntimeError("this engine serves the block vocoder path")
        return self._scheduler.run(steps)

    def _run(self, name: str, *inputs: np.ndarray) -> np.ndarray:
        primary = self._primary
        if self.on_primary and primary is not None and primary.serves(name, inputs[0]):
            try:
                self._faults.take_injected_oom()
                return primary.run(name, inputs[0])
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self.on_primary = False
                self.fallbacks += 1
                self._on_fallback(name, exc)
        return self._graphs[name].run(*inputs)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self._run("decoder", z.astype(np.float32))

    def bridge(self, mel: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return self._run("bridge", mel.astype(np.float32), positions.astype(np.float32))

    def vocode(self, mel: np.ndarray) -> np.ndarray:
        return self._run("vocoder", np.ascontiguousarray(mel, dtype=np.float32)).reshape(-1)

    def polyphase(self, rate: int) -> Polyphase:
        name = f"resampler:{rate}"
        return lambda x: self._run(name, x)
