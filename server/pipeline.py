"""The generation pipeline: params -> latent trajectory -> mel -> audio blocks.

Pure apart from the :class:`Runner` it is given (the engine's onnxruntime sessions), so
it is tested without a server. Unary and streaming replies both come from
:func:`audio_blocks`, so a unary reply is the concatenation of the stream's blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from distill_serve.geometry import plan_chunks
from distill_serve.server.dsp import (
    AntiAlias,
    CausalPeakNormaliser,
    MidSide,
    overlap_add,
    plan_blocks,
)
from distill_serve.server.model import ModelSpec
from distill_serve.server.request import GenerationParams, Spatial
from distill_serve.server.resample import Polyphase, StreamingResampler
from distill_serve.server.trajectory import trajectory

DECODER_BATCH = 256
NORMALISER_RAMP_S = 0.02
#: log1p mel ceiling (a power of ~1e13): extreme latents can overflow expm1 in the bridge.
MAX_LOG1P_MEL = 30.0


class Runner(Protocol):
    """Runs the bundle's graphs (see :class:`distill_serve.server.engine.RequestRunner`)."""

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


@dataclass
class PipelineStats:
    decoder_chunks: int = 0
    vocoder_blocks: int = 0
    block_sizes: list[int] = field(default_factory=list)


def vocoder_mel(
    runner: Runner, model: ModelSpec, params: GenerationParams, seed: int, stats: PipelineStats
) -> np.ndarray:
    """The whole request's vocoder-ready mel, ``(n_mels_voc, T_voc)``."""
    geo = model.geometry
    t_voc = geo.vocoder_frames(params.duration_s)
    chunk_frames = model.chunk_frames_for(params.chunk_duration_s)
    plan = plan_chunks(geo.decoder_frames_needed(t_voc), chunk_frames, params.steps_between)
    latents = trajectory(
        params.mode,
        plan,
        seed,
        model.latent_dim,
        params.latent,
        params.evolution_amount,
        params.steps_between,
    )
    chunks = np.concatenate(
        [
            runner.decode(latents[i : i + DECODER_BATCH])
            for i in range(0, len(latents), DECODER_BATCH)
        ]
    )[:, :, :chunk_frames]
    stats.decoder_chunks += len(latents)
    mel = np.clip(overlap_add(chunks, plan.offsets, plan.total_frames), 0.0, MAX_LOG1P_MEL)
    return runner.bridge(mel[None], geo.bridge_positions(t_voc))[0]


def audio_blocks(
    runner: Runner, model: ModelSpec, params: GenerationParams, stats: PipelineStats | None = None
) -> Iterator[np.ndarray]:
    """Yield ``(channels, n)`` float32 blocks at ``params.sample_rate``; together they hold
    exactly ``params.total_samples`` frames.

    Order per block: vocode (with context) -> anti-alias -> spatial -> normalise ->
    resample -> trim.
    """
    stats = stats if stats is not None else PipelineStats()
    seeds = [params.seed] + ([params.seed + 1] if params.spatial is Spatial.DUAL_SEED else [])
    mels = [vocoder_mel(runner, model, params, s, stats) for s in seeds]
    rate = model.vocoder_rate
    hop = model.geometry.vocoder_hop
    antialias = AntiAlias(rate, model.antialias_cutoff_hz, model.antialias_order, len(mels))
    mid_side = MidSide(params.stereo_width) if params.spatial is Spatial.STEREO_MID_SIDE else None
    normalise = CausalPeakNormaliser(model.peak_target, int(NORMALISER_RAMP_S * rate))
    resampler = (
        StreamingResampler(
            runner.polyphase(params.sample_rate),
            model.resamplers[params.sample_rate],
            params.channels,
        )
        if params.sample_rate != rate
        else None
    )
    remaining = params.total_samples

    def emit(block: np.ndarray) -> np.ndarray:
        nonlocal remaining
        out = block[:, :remaining]
        remaining -= out.shape[1]
        return out

    for block in plan_blocks(mels[0].shape[1], model.context_frames):
        audio = np.stack(
            [
                runner.vocode(m[None, :, block.lo : block.hi])[
                    (block.start - block.lo) * hop : (block.stop - block.lo) * hop
                ]
                for m in mels
            ]
        )
        stats.vocoder_blocks += 1
        audio = antialias(np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0))
        if mid_side is not None:
            audio = mid_side(audio)
        audio = normalise(audio)
        if resampler is not None:
            audio = resampler.push(audio)
        out = emit(audio)
        if out.shape[1]:
            stats.block_sizes.append(out.shape[1])
            yield out
        if remaining == 0:
            return
    tail = emit(resampler.flush()) if resampler is not None else np.zeros((params.channels, 0))
    if remaining:  # not expected (the vocoder covers the duration); keep the exact length
        tail = np.concatenate([tail, np.zeros((params.channels, remaining), np.float32)], axis=1)
    if tail.shape[1]:
        stats.block_sizes.append(tail.shape[1])
        yield tail.astype(np.float32)
