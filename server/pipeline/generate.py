"""A fixed-length generation: params -> latent trajectory -> mel -> audio blocks.

Unary and streaming replies both come from :func:`rendered_blocks`, so a unary reply is the
concatenation of the stream's blocks. Pure apart from the :class:`Runner` it is given, so it
is tested without a server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from distill_serve.geometry import plan_chunks
from distill_serve.server.pipeline.dsp import plan_blocks
from distill_serve.server.pipeline.mel import mel_source, seeds
from distill_serve.server.pipeline.model import ModelSpec
from distill_serve.server.pipeline.render import BlockRenderer
from distill_serve.server.pipeline.request import GenerationParams
from distill_serve.server.pipeline.runner import (
    FIRST_AUDIO,
    REST,
    PipelineStats,
    RenderedBlock,
    Runner,
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


def rendered_blocks(
    runner: Runner, model: ModelSpec, params: GenerationParams, stats: PipelineStats | None = None
) -> Iterator[RenderedBlock]:
    """Yield blocks of ``(channels, n)`` float32 audio at ``params.sample_rate``, each with
    the provider that computed it; together they hold exactly ``params.total_samples``
    frames."""
    stats = stats if stats is not None else PipelineStats()
    t_voc, steps = fixed_length_plan(model, params)
    sources = [mel_source(runner, model, params, s, stats, max_chunks=steps) for s in seeds(params)]
    renderer = BlockRenderer(runner, model, params, sources, stats, t_voc)
    remaining = params.total_samples
    started = time.monotonic()
    frame_s = model.geometry.vocoder_hop / model.vocoder_rate

    def emit(block: RenderedBlock, pad: bool = False) -> RenderedBlock:
        nonlocal remaining
        out = block.audio[:, :remaining]
        remaining -= out.shape[1]
        if pad:  # the tail; padded only if the vocoder fell short (not expected): exact length
            zeros = np.zeros((params.channels, remaining), np.float32)
            out, remaining = np.concatenate([out, zeros], axis=1).astype(np.float32), 0
        if out.shape[1]:
            stats.block_sizes.append(out.shape[1])
        return RenderedBlock(out, block.provider, block.fallbacks)

    for block in plan_blocks(t_voc, model.context_frames):
        # needed when a listener playing from the first block would reach it
        deadline = started + block.start * frame_s
        rank = FIRST_AUDIO if block.start == 0 else REST
        out = emit(renderer.render(block, deadline, rank))
        if out.audio.shape[1]:
            yield out
        if remaining == 0:
            return
    tail = emit(renderer.flush(params.channels), pad=True)
    if tail.audio.shape[1]:
        yield tail


def audio_blocks(
    runner: Runner, model: ModelSpec, params: GenerationParams, stats: PipelineStats | None = None
) -> Iterator[np.ndarray]:
    """The audio of :func:`rendered_blocks` alone."""
    for block in rendered_blocks(runner, model, params, stats):
        yield block.audio
