"""Pure functions: trajectories, chunk plans, overlap-add, per-block DSP (no server)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from distill_serve.audio import Encoding, decode, encode
from distill_serve.geometry import FrameGeometry, plan_chunks
from distill_serve.server.pipeline.dsp import (
    AntiAlias,
    CausalPeakNormaliser,
    chunk_window,
    overlap_add,
    plan_blocks,
)
from distill_serve.server.pipeline.request import ChunkMode
from distill_serve.server.pipeline.spatial import MidSide
from distill_serve.server.pipeline.trajectory import (
    LatentPath,
    circling_anchors,
    slerp,
    trajectory,
)

GEO = FrameGeometry(48000, 512, 44100, 512)


def test_slerp_endpoints_norm_and_lerp_fallback() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    np.testing.assert_allclose(slerp(a, b, 0.0), a, atol=1e-5)
    np.testing.assert_allclose(slerp(a, b, 1.0), b, atol=1e-5)
    b_same_norm = b * np.linalg.norm(a) / np.linalg.norm(b)
    mid = slerp(a, b_same_norm, 0.5)
    assert abs(np.linalg.norm(mid) - np.linalg.norm(a)) < 1e-3  # stays on the sphere
    near = a * 1.0001  # dot > 0.9995: linear interpolation, no NaN
    out = slerp(a, near, 0.5)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, (a + near) / 2, atol=1e-5)


@pytest.mark.parametrize("frames_needed", [1, 94, 95, 400, 5630])
@pytest.mark.parametrize("steps_between", [0, 3])
def test_chunk_plan_covers_frames(frames_needed: int, steps_between: int) -> None:
    plan = plan_chunks(frames_needed, 94, steps_between)
    assert plan.total_frames >= frames_needed
    assert plan.offsets[0] == 0 and plan.offsets[-1] + 94 == plan.total_frames
    base_steps = max(1, -(-(frames_needed - 94) // 47) + 1)
    assert plan.steps == (base_steps - 1) * (steps_between + 1) + 1
    assert list(plan.offsets) == sorted(plan.offsets)


def test_overlap_add_reconstructs_constant_and_blends() -> None:
    plan = plan_chunks(400, 94)
    chunks = np.full((plan.steps, 128, 94), 3.0, dtype=np.float32)
    np.testing.assert_allclose(overlap_add(chunks, plan.offsets, plan.total_frames), 3.0, rtol=1e-6)
    chunks[1] = 5.0  # the overlap of chunks 0 and 1 is a weighted blend
    mel = overlap_add(chunks, plan.offsets, plan.total_frames)
    assert np.all(mel[:, 47:94] > 3.0) and np.all(mel[:, 47:94] < 5.0)
    w = chunk_window(94)
    np.testing.assert_allclose(w[:47] + w[47:], 1.0, atol=1e-12)  # COLA at 50 %
    assert w.min() > 0


@pytest.mark.parametrize("mode", list(ChunkMode))
def test_trajectory_shapes_and_determinism(mode: ChunkMode) -> None:
    plan = plan_chunks(500, 94, 3 if mode is ChunkMode.LATENT_INTERP else 0)
    start = np.ones(64, np.float32) if mode is ChunkMode.SLIDER else None
    kw = {
        "start": start,
        "evolution": 0.3,
        "steps_between": 3 if mode is ChunkMode.LATENT_INTERP else 0,
    }
    a = trajectory(mode, plan, 11, 64, **kw)
    b = trajectory(mode, plan, 11, 64, **kw)
    c = trajectory(mode, plan, 12, 64, **kw)
    assert a.shape == (plan.steps, 64)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_latent_interp_passes_through_anchors_smoothly() -> None:
    plan = plan_chunks(500, 94, 3)
    z = trajectory(ChunkMode.LATENT_INTERP, plan, 5, 64, steps_between=3)
    crossfade = trajectory(ChunkMode.CROSSFADE, plan_chunks(500, 94), 5, 64)
    np.testing.assert_allclose(z[::4], crossfade, atol=1e-6)  # anchors at full hops
    steps = np.linalg.norm(np.diff(z, axis=0), axis=1)
    jumps = np.linalg.norm(np.diff(crossfade, axis=0), axis=1)
    assert steps.max() < jumps.min()  # denser points: smaller moves than anchor jumps


def test_slider_drift_static_at_zero() -> None:
    start = np.linspace(-1, 1, 64).astype(np.float32)
    static = circling_anchors(start, 1, 5, 0.0)
    np.testing.assert_allclose(static, np.tile(start, (5, 1)), atol=1e-6)
    moving = circling_anchors(start, 1, 5, 0.5)
    assert np.linalg.norm(moving[-1] - start) > 0.5


def test_slider_mode_circles_its_setting_and_never_wanders_off() -> None:
    """The app's meaning: anchor k is slerp(z0, random_k, evolution) from z0 itself, every
    ~1.5 s (3 chunks), so over 60 s (120 chunks) the distance to z0 stays bounded; a random
    walk's (each anchor from the last) would grow."""
    rng = np.random.default_rng(3)
    z0 = rng.standard_normal(64).astype(np.float32)
    path = LatentPath(ChunkMode.SLIDER, 21, 64, z0, evolution=0.5, anchor_chunks=3)
    z = path.take(120)
    distance = np.linalg.norm(z - z0, axis=1)
    np.testing.assert_allclose(z[0], z0)
    for k in (1, 7, 39):  # each anchor is a pure function of (seed, k), three chunks apart
        target = np.random.default_rng([21, k]).standard_normal(64).astype(np.float32)
        np.testing.assert_allclose(z[3 * k], slerp(z0, target, 0.5), atol=1e-6)
    bound = max(np.linalg.norm(slerp(z0, t, 0.5) - z0) for t in rng.standard_normal((200, 64)))
    assert distance.max() <= 1.1 * bound
    assert distance[80:].mean() < 1.3 * distance[3:40].mean()  # no drift away over time
    walk = [z0]
    for _ in range(40):  # the old meaning, for scale: each anchor from the previous one
        walk.append(slerp(walk[-1], rng.standard_normal(64).astype(np.float32), 0.5))
    assert np.linalg.norm(walk[-1] - z0) > distance[3:].mean()


def _in_blocks(process, x: np.ndarray, cuts: list[int]) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate([process(p) for p in np.split(x, cuts, axis=-1)], axis=-1)


def test_antialias_and_midside_are_exact_across_blocks() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 9000)).astype(np.float32)
    cuts = [100, 101, 4000, 8999]
    whole = AntiAlias(44100, 20000.0, 8, 1)(x)
    np.testing.assert_allclose(
        _in_blocks(AntiAlias(44100, 20000.0, 8, 1), x, cuts), whole, atol=1e-6
    )
    ms_whole = MidSide(1.0)(x)
    np.testing.assert_allclose(_in_blocks(MidSide(1.0), x, cuts), ms_whole, atol=1e-6)
    assert ms_whole.shape == (2, 9000)
    np.testing.assert_allclose(ms_whole.sum(axis=0) / 2, x[0], atol=1e-6)  # (L+R)/2 = mid
    np.testing.assert_allclose(MidSide(0.0)(x)[0], MidSide(0.0)(x)[1])  # width 0: mono


def test_antialias_removes_content_above_cutoff() -> None:
    t = np.arange(44100) / 44100
    tone = np.sin(2 * np.pi * 21500 * t)[None].astype(np.float32)
    assert np.abs(AntiAlias(44100, 20000.0, 8, 1)(tone)[:, 2000:]).max() < 0.2


def test_normaliser_never_exceeds_target_and_reaches_it() -> None:
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 20000)) * np.linspace(0.1, 3.0, 20000)).astype(np.float32)
    norm = CausalPeakNormaliser(0.891, ramp=882)
    out = _in_blocks(norm, x, [700, 5000, 12000])
    assert np.abs(out).max() <= 0.891 + 1e-6
    assert np.abs(out).max() > 0.89
    # Causal: a block's output does not depend on later blocks.
    head = CausalPeakNormaliser(0.891, ramp=882)(x[:, :700])
    np.testing.assert_allclose(out[:, :700], head)


def test_plan_blocks_tiles_with_context() -> None:
    blocks = plan_blocks(1000, context=20)
    assert blocks[0].start == 0 and blocks[-1].stop == 1000
    assert all(a.stop == b.start for a, b in itertools.pairwise(blocks))
    assert blocks[0].stop - blocks[0].start == 16  # small first block: early audio
    for b in blocks:
        assert b.lo == max(0, b.start - 20) and b.hi == min(1000, b.stop + 20)


def test_geometry_frames_and_positions() -> None:
    assert GEO.vocoder_frames(1.0) == 87  # ceil(44100 / 512)
    pos = GEO.bridge_positions(87)
    assert pos[0] == pytest.approx(256 / 44100 * 48000 / 512)
    np.testing.assert_allclose(np.diff(pos), 512 / 44100 * 48000 / 512, rtol=1e-5)
    assert GEO.decoder_frames_needed(87) == int(pos[-1]) + 2
    mel = np.arange(3 * 94, dtype=np.float32).reshape(1, 3, 94)  # 1 s of decoder frames
    cut, positions = GEO.bridge_inputs(mel, 1.0)
    np.testing.assert_array_equal(positions, pos)
    assert cut.shape == (1, 3, GEO.decoder_frames_needed(87))
    np.testing.assert_array_equal(cut[:, :, :94], mel)  # ... then the last frame repeated
    np.testing.assert_array_equal(cut[:, :, 94:], np.repeat(mel[:, :, -1:], cut.shape[2] - 94, 2))
    short, _ = GEO.bridge_inputs(np.concatenate([mel, mel], axis=2), 1.0)
    assert short.shape == cut.shape  # a longer mel is cut to the frames the bridge reads


@pytest.mark.parametrize("encoding", [e for e in Encoding if e.is_pcm])
def test_encoding_roundtrip(encoding: Encoding) -> None:
    rng = np.random.default_rng(3)
    x = np.clip(rng.standard_normal((2, 1000)) * 0.3, -1, 1).astype(np.float32)
    data = encode(x, encoding)
    assert len(data) == 2 * 1000 * {"pcm16": 2, "pcm24": 3, "float32": 4}[encoding.value]
    tol = {"pcm16": 1 / 32767, "pcm24": 1 / 8388607, "float32": 0}[encoding.value]
    np.testing.assert_allclose(decode(data, encoding, 2), x, atol=tol)
    neg = encode(np.array([[-1.0, 1.0]], np.float32), encoding)
    np.testing.assert_allclose(decode(neg, encoding, 1), [[-1.0, 1.0]], atol=tol)


@pytest.mark.parametrize("encoding", [Encoding.FLAC, Encoding.OPUS])
def test_codecs_are_not_sample_formats(encoding: Encoding) -> None:
    with pytest.raises(ValueError, match="codec"):
        encode(np.zeros((1, 10), np.float32), encoding)
