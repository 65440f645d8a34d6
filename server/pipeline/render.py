"""The generation pipeline: params -> latent trajectory -> mel -> audio blocks.

Pure apart from the :class:`Runner` it is given (the engine's onnxruntime sessions), so
it is tested without a server. Unary and streaming replies both come from
:func:`audio_blocks`, so a unary reply is the concatenation of the stream's blocks; live
sessions (:mod:`distill_serve.server.pipeline.live`) render with the same :class:`BlockRenderer` and
:class:`~distill_serve.server.pipeline.mel.MelSource`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from distill_serve.geometry import plan_chunks
from distill_serve.server.engine.scheduler import FIRST_AUDIO, REST, Step
from distill_serve.server.pipeline.dsp import (
    AntiAlias,
    Block,
    CausalPeakNormaliser,
    MidSide,
    fit_window,
    plan_blocks,
)
from distill_serve.server.pipeline.mel import MelSource
from distill_serve.server.pipeline.model import ModelSpec, StreamSpec
from distill_serve.server.pipeline.request import GenerationParams, Spatial
from distill_serve.server.pipeline.resample import Polyphase, StreamingResampler
from distill_serve.server.pipeline.trajectory import LatentPath
from distill_serve.server.pipeline.vocoder_stream import StreamVocoder

NORMALISER_RAMP_S = 0.02
#: The normaliser's segment in vocoder frames: every block but a request's last is a multiple
#: of it (fixed-length blocks are 16, 32, ... 256 frames, live blocks 8 or 16), so a live
#: session and a fixed-length request get the same gains.
NORMALISER_SEGMENT_FRAMES = 8


class Runner(Protocol):
    """Runs the bundle's graphs (see :class:`distill_serve.server.engine.engine.RequestRunner`)."""

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

    def stream_steps(self, steps: list[Step]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Streaming-vocoder steps -> ``(audio (S * hop,), state (N,))`` each."""
        ...


@dataclass
class PipelineStats:
    decoder_chunks: int = 0
    vocoder_blocks: int = 0
    block_sizes: list[int] = field(default_factory=list)


def seeds(params: GenerationParams) -> list[int]:
    """One trajectory seed per independent channel (dual-seed: seed and seed + 1)."""
    return [params.seed] + ([params.seed + 1] if params.spatial is Spatial.DUAL_SEED else [])


def mel_source(
    runner: Runner,
    model: ModelSpec,
    params: GenerationParams,
    seed: int,
    stats: PipelineStats,
    max_chunks: int | None = None,
) -> MelSource:
    """The mel of ``params``' trajectory for ``seed`` (``max_chunks`` None: open-ended)."""
    path = LatentPath(
        params.mode,
        seed,
        model.latent_dim,
        params.latent,
        params.evolution_amount,
        params.steps_between,
    )
    chunk_frames = model.chunk_frames_for(params.chunk_duration_s)
    return MelSource(
        runner, model, path, chunk_frames, params.steps_between, stats, max_chunks=max_chunks
    )


def fixed_length_plan(model: ModelSpec, params: GenerationParams) -> tuple[int, int]:
    """Vocoder frames of a fixed-length request and its decoder chunk count (DESIGN's plan)."""
    geo = model.geometry
    t_voc = geo.vocoder_frames(params.duration_s)
    chunk_frames = model.chunk_frames_for(params.chunk_duration_s)
    plan = plan_chunks(geo.decoder_frames_needed(t_voc), chunk_frames, params.steps_between)
    return t_voc, plan.steps


def vocoder_mel(
    runner: Runner, model: ModelSpec, params: GenerationParams, seed: int, stats: PipelineStats
) -> np.ndarray:
    """The whole fixed-length request's vocoder-ready mel, ``(n_mels_voc, T_voc)``."""
    t_voc, steps = fixed_length_plan(model, params)
    return mel_source(runner, model, params, seed, stats, max_chunks=steps).vocoder_frames(0, t_voc)


class BlockRenderer:
    """Turns vocoder blocks of one generation into output audio.

    Order per block: vocode -> anti-alias -> spatial -> normalise -> (fade) -> resample.
    Every step keeps its state across blocks. The vocoder runs one of two ways, with the
    same audio: the streaming graph fed each frame once (:class:`StreamVocoder`, when the
    runner streams; ``step_frames`` per step, default the bundle's largest), or the
    whole-clip graph on each block with context frames on both sides.

    :attr:`deadline` (``time.monotonic`` seconds) says when the next block's audio is needed
    and :attr:`rank` what it is (``server/engine/scheduler.py``: a live block, a stream's first
    audio, the rest); the step scheduler serves the most urgent steps first.
    """

    def __init__(
        self,
        runner: Runner,
        model: ModelSpec,
        params: GenerationParams,
        sources: list[MelSource],
        stats: PipelineStats,
        total_frames: int | None,
        step_frames: int | None = None,
    ) -> None:
        self.sources = sources
        self._runner = runner
        self.deadline: float | None = None
        self.rank = REST
        spec = runner.stream_spec
        self._stream = (
            StreamVocoder(
                runner, model, spec, sources, total_frames, step_frames or max(spec.step_frames)
            )
            if spec is not None
            else None
        )
        self._stats = stats
        self._hop = model.geometry.vocoder_hop
        self._total = total_frames  # None: open-ended (live)
        # Frames kept behind a block: its context, or a whole bucket when windows are widened.
        self._keep = max(model.context_frames, *runner.vocoder_buckets, 0)
        rate = model.vocoder_rate
        self._antialias = AntiAlias(
            rate, model.antialias_cutoff_hz, model.antialias_order, len(sources)
        )
        self.mid_side = (
            MidSide(params.stereo_width) if params.spatial is Spatial.STEREO_MID_SIDE else None
        )
        self._normalise = CausalPeakNormaliser(
            model.peak_target,
            int(NORMALISER_RAMP_S * rate),
            segment=NORMALISER_SEGMENT_FRAMES * self._hop,
        )
        self._resampler = (
            StreamingResampler(
                runner.polyphase(params.sample_rate),
                model.resamplers[params.sample_rate],
                params.channels,
            )
            if params.sample_rate != rate
            else None
        )

    def render(self, block: Block, fade: np.ndarray | None = None) -> np.ndarray:
        """Audio ``(channels, n)`` of ``block`` at the output rate (a resampler holds back a
        few samples until the next block or :meth:`flush`). ``fade`` multiplies the block's
        first ``len(fade)`` samples at the vocoder rate and drops the rest."""
        audio = (
            self._stream.audio(block.start, block.stop, self.deadline, self.rank)
            if self._stream is not None
            else self._block_audio(block)
        )
        self._stats.vocoder_blocks += 1
        audio = self._antialias(np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0))
        if self.mid_side is not None:
            audio = self.mid_side(audio)
        audio = self._normalise(audio)
        if fade is not None:
            audio = audio[:, : fade.size] * fade[: audio.shape[1]]
        return self._resampler.push(audio) if self._resampler is not None else audio

    @property
    def vocoder_path(self) -> str:
        return "stream" if self._stream is not None else "block"

    def _block_audio(self, block: Block) -> np.ndarray:
        """The whole-clip graph on the block's window (context on both sides)."""
        hop = self._hop
        lo, hi = block.lo, block.hi
        if buckets := self._runner.vocoder_buckets:
            first = max(s.first_frame for s in self.sources)
            lo, hi = fit_window(lo, hi, first, self._total, buckets)
        audio = np.stack(
            [
                self._runner.vocode(s.vocoder_frames(lo, hi)[None])[
                    (block.start - lo) * hop : (block.stop - lo) * hop
                ]
                for s in self.sources
            ]
        )
        for s in self.sources:
            s.release(block.stop - self._keep)
        return audio

    def flush(self, channels: int) -> np.ndarray:
        """End of signal: the resampler's last samples (none without a resampler)."""
        if self._resampler is None:
            return np.zeros((channels, 0), np.float32)
        return self._resampler.flush()


def audio_blocks(
    runner: Runner, model: ModelSpec, params: GenerationParams, stats: PipelineStats | None = None
) -> Iterator[np.ndarray]:
    """Yield ``(channels, n)`` float32 blocks at ``params.sample_rate``; together they hold
    exactly ``params.total_samples`` frames."""
    stats = stats if stats is not None else PipelineStats()
    t_voc, steps = fixed_length_plan(model, params)
    sources = [mel_source(runner, model, params, s, stats, max_chunks=steps) for s in seeds(params)]
    renderer = BlockRenderer(runner, model, params, sources, stats, t_voc)
    remaining = params.total_samples
    started = time.monotonic()
    frame_s = model.geometry.vocoder_hop / model.vocoder_rate

    def emit(block: np.ndarray) -> np.ndarray:
        nonlocal remaining
        out = block[:, :remaining]
        remaining -= out.shape[1]
        return out

    for block in plan_blocks(t_voc, model.context_frames):
        # needed when a listener playing from the first block would reach it
        renderer.deadline = started + block.start * frame_s
        renderer.rank = FIRST_AUDIO if block.start == 0 else REST
        out = emit(renderer.render(block))
        if out.shape[1]:
            stats.block_sizes.append(out.shape[1])
            yield out
        if remaining == 0:
            return
    tail = emit(renderer.flush(params.channels))
    if remaining:  # not expected (the vocoder covers the duration); keep the exact length
        tail = np.concatenate([tail, np.zeros((params.channels, remaining), np.float32)], axis=1)
    if tail.shape[1]:
        stats.block_sizes.append(tail.shape[1])
        yield tail.astype(np.float32)
