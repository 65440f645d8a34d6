"""What a generation was: the tags its reply and files carry (:mod:`distill_serve.tags`)."""

from __future__ import annotations

import json

import numpy as np

from distill_serve import tags
from distill_serve.server.pipeline.request import (
    STEREO_WIDTH,
    ChunkMode,
    GenerationParams,
    Spatial,
)


def _f32(value: float) -> float:
    """A float32 setting as its shortest decimal (0.7, not 0.699999988079071)."""
    return float(str(np.float32(value)))


def settings(p: GenerationParams) -> dict[str, object]:
    """The validated settings that made the audio, as plain JSON values: with the seed and
    the bundle they make the same audio again (the encoding is the file's own business)."""
    out: dict[str, object] = {
        "mode": p.mode.value,
        "duration_s": p.duration_s,
        "sample_rate": p.sample_rate,
        "chunk_duration_s": p.chunk_duration_s,
        "spatial": p.spatial.value,
    }
    if p.spatial in STEREO_WIDTH:
        out["stereo_width"] = _f32(p.stereo_width)
    if p.spatial is Spatial.STEREO_HAAS:
        out["stereo_depth"] = _f32(p.stereo_depth)
    if p.mode is ChunkMode.LATENT_INTERP:
        out["steps_between"] = p.steps_between
    if p.mode is ChunkMode.SLIDER:
        out["evolution_amount"] = _f32(p.evolution_amount)
        if p.sliders is not None:
            out["sliders"] = {str(i): pos for i, pos in p.sliders}
        elif p.latent is not None:
            out["latent"] = [_f32(v) for v in p.latent]
    return out


def provenance_tags(p: GenerationParams, model: str, bundle_id: str) -> dict[str, str]:
    """``distill_seed``, ``distill_model``, ``distill_bundle`` and ``distill_settings``."""
    return {
        tags.SEED: str(p.seed),
        tags.MODEL: model,
        tags.BUNDLE: bundle_id,
        tags.SETTINGS: json.dumps(settings(p), separators=(",", ":")),
    }
