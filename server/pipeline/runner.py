"""The runner port: what the pipeline asks of the engine, and the small records that cross.

The pipeline is pure numpy; it runs graphs only through a :class:`Runner` it is given. The
engine (``server/engine/runner.py``) implements it on onnxruntime sessions and its step
scheduler; tests implement it with numpy stand-ins. Nothing here imports the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypeAlias

import numpy as np

from distill_serve.bundle import STREAM_OPEN_END
from distill_serve.server.pipeline.model import StreamSpec
from distill_serve.server.pipeline.resample import Polyphase

#: Step ranks, most urgent first: a live session's, a stream's first audio, the rest
#: (the step scheduler serves by rank, then deadline: ``server/engine/scheduler.py``).
LIVE, FIRST_AUDIO, REST = 0, 1, 2

#: A stream's state as the runner keeps it: a host array ``(N,)`` (a new stream's zeros, the
#: CPU path's states) or whatever handle the runner returned for it (on the device path, a
#: row of the engine's device-resident state pool: ``server/engine/state_pool.py``). The
#: pipeline never looks inside: it hands each step the state its previous step returned.
StreamState: TypeAlias = object


@dataclass
class Step:
    """One stream's next step: ``mel (n_mels, S)``, the frames fed before it, its state
    (:data:`StreamState`), when its audio is needed (``time.monotonic`` seconds), the
    stream's clip length in frames (open-ended: :data:`~distill_serve.bundle.
    STREAM_OPEN_END`), and its rank (:data:`LIVE`, :data:`FIRST_AUDIO` or :data:`REST`)."""

    mel: np.ndarray
    position: int
    state: StreamState
    deadline: float
    end: int = STREAM_OPEN_END
    rank: int = REST

    @property
    def frames(self) -> int:
        return int(self.mel.shape[1])


class Runner(Protocol):
    """Runs the bundle's graphs for one generation (the engine's ``RequestRunner``)."""

    def decode(self, z: np.ndarray) -> np.ndarray:
        """``(B, latent_dim)`` -> ``(B, n_mels, chunk_frames)`` log1p mels."""
        ...

    def bridge(self, mel: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """``(1, n_mels, T_dec)``, ``(T_voc,)`` -> ``(1, n_mels_voc, T_voc)``."""
        ...

    def vocode(self, mel: np.ndarray) -> np.ndarray:
        """``(1, n_mels_voc, T)`` -> ``(T * hop,)`` audio at the vocoder rate."""
        ...

    def polyphase(self, rate: int) -> Polyphase:
        """The resampler graph from the vocoder rate to ``rate``."""
        ...

    @property
    def vocoder_buckets(self) -> tuple[int, ...]:
        """Vocoder window lengths to use (empty: any; see server/engine/cuda.py)."""
        ...

    @property
    def stream_spec(self) -> StreamSpec | None:
        """The streaming vocoder's layout when this generation streams (None: blocks)."""
        ...

    def stream_steps(self, steps: list[Step]) -> list[tuple[np.ndarray, StreamState]]:
        """Streaming-vocoder steps -> ``(audio (S * hop,), the stream's next state)`` each."""
        ...

    @property
    def fixed_step_shapes(self) -> bool:
        """Whether its steps run on sessions of fixed shapes (the device path): a stream then
        splits its short steps into powers of two (``vocoder_stream.step_plan``)."""
        ...

    @property
    def provider(self) -> str:
        """The execution provider the generation runs on now."""
        ...

    @property
    def fallbacks(self) -> int:
        """Out-of-memory fallbacks to CPU so far in this generation."""
        ...


@dataclass
class PipelineStats:
    """What one generation did: decoder chunks, vocoder blocks and the sizes of its blocks."""

    decoder_chunks: int = 0
    vocoder_blocks: int = 0
    block_sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class RenderedBlock:
    """One block of output audio ``(channels, n)`` and where it was computed: the provider
    that ran it and the generation's out-of-memory fallbacks so far."""

    audio: np.ndarray
    provider: str
    fallbacks: int
