"""Live sessions without a server: equivalence with fixed-length requests, controls that
change only later blocks, seams, fade-out, pacing arithmetic and bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from distill_serve.export.parity import snr_db
from distill_serve.server.engine.engine import Engine
from distill_serve.server.pipeline.live import (
    LiveSession,
    Pacer,
    RawControl,
    check_control,
    live_block_frames,
)
from distill_serve.server.pipeline.mel import mel_source
from distill_serve.server.pipeline.request import ChunkMode, InvalidRequest, Spatial
from distill_serve.server.pipeline.resample import Polyphase
from distill_serve.server.pipeline.runner import PipelineStats
from tests.conftest import generate, params

#: Unary requests end their mel with the last chunk alone and the vocoder's edge; a live
#: session goes on. Compare everything before that tail.
TAIL_S = 0.7


def control(sequence: int, **kw: object) -> RawControl:
    return RawControl(sequence=sequence, **kw)  # type: ignore[arg-type]


def run_live(session: LiveSession, samples: int, at: dict[int, RawControl] | None = None):  # type: ignore[no-untyped-def]
    """Blocks until ``samples`` output frames; ``at[i]`` is applied before block ``i``."""
    blocks = []
    last = 0
    while sum(b.audio.shape[1] for b in blocks) < samples:
        raw = (at or {}).get(len(blocks))
        if raw is not None:
            c = check_control(raw, session.model, session.params, last)
            session.apply(c)
            last = c.sequence
        blocks.append(session.next_block())
    return blocks


def joined(blocks) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate([b.audio for b in blocks], axis=1)


@pytest.mark.parametrize(
    ("mode", "rate", "spatial"),
    [
        (ChunkMode.CROSSFADE, 44100, Spatial.MONO),
        (ChunkMode.LATENT_INTERP, 48000, Spatial.MONO),
        (ChunkMode.SLIDER, 16000, Spatial.STEREO_MID_SIDE),
        (ChunkMode.CROSSFADE, 22050, Spatial.DUAL_SEED),
    ],
)
def test_live_without_controls_is_the_unary_audio(  # type: ignore[no-untyped-def]
    engine: Engine, mode: ChunkMode, rate: int, spatial: Spatial, report
) -> None:
    kw = {"steps_between": 2} if mode is ChunkMode.LATENT_INTERP else {}
    p = params(engine, mode, duration_s=5.0, sample_rate=rate, spatial=spatial, **kw)
    unary = generate(engine, p)
    live = joined(run_live(LiveSession(engine.runner(), engine.model, p, 0.3), unary.shape[1]))
    n = unary.shape[1] - int(TAIL_S * rate)
    snr = snr_db(unary[:, :n], live[:, :n])
    report(f"live vs unary, {mode.value} {spatial.value} {rate} Hz: {snr:.1f} dB over {n} frames")
    assert live.shape[0] == unary.shape[0]
    assert snr >= 60.0


def test_live_blocks_have_the_chosen_size(engine: Engine) -> None:
    hop, rate = engine.model.geometry.vocoder_hop, engine.model.vocoder_rate
    assert live_block_frames(0.1, engine.model) == 8
    assert live_block_frames(1.0, engine.model) == 16
    p = params(engine, sample_rate=rate)
    blocks = run_live(LiveSession(engine.runner(), engine.model, p, 1.0), 5 * 16 * hop)
    assert {b.audio.shape[1] for b in blocks} == {16 * hop}


@pytest.mark.parametrize(
    ("mode", "change"),
    [
        (ChunkMode.SLIDER, {"slider_positions": [(1, -8)]}),
        (ChunkMode.SLIDER, {"evolution_amount": 0.8}),
        (ChunkMode.CROSSFADE, {"slider_positions": [(0, 9)], "transition_s": 0.5}),
        (ChunkMode.LATENT_INTERP, {"latent": list(np.full(64, 1.5))}),
    ],
)
def test_a_control_changes_only_the_blocks_after_it(  # type: ignore[no-untyped-def]
    engine: Engine, mode: ChunkMode, change: dict, report
) -> None:
    p = params(engine, mode, duration_s=1.0)
    k, total = 5, 44100 * 3
    plain = run_live(LiveSession(engine.runner(), engine.model, p, 1.0), total)
    steered = run_live(
        LiveSession(engine.runner(), engine.model, p, 1.0), total, {k: control(1, **change)}
    )
    for i in range(k):  # byte-identical before the change
        np.testing.assert_array_equal(steered[i].audio, plain[i].audio)
        assert steered[i].control_sequence == 0
    assert all(b.control_sequence == 1 for b in steered[k:])
    assert not np.array_equal(steered[k].audio, plain[k].audio)  # the first block after it
    a, b = joined(plain), joined(steered)
    start = sum(x.audio.shape[1] for x in plain[:k])
    later = snr_db(a[:, start:], b[:, start:])
    assert later < 40.0  # the audio after it differs (the mel test below shows how much)
    # No click: the seam's sample-to-sample jump, and every jump while the change glides in,
    # stay within the range of jumps the unsteered signal has.
    normal = np.abs(np.diff(a, axis=1)).max()
    seam = np.abs(b[:, start] - b[:, start - 1]).max()
    glide = np.abs(np.diff(b[:, start - 1 : start + 44100], axis=1)).max()
    report(
        f"live control {mode.value} {sorted(change)}: seam jump {seam:.3f}, glide max "
        f"{glide:.3f}, unsteered max {normal:.3f}; after the change {later:.1f} dB vs unsteered"
    )
    assert seam <= normal and glide <= 1.05 * normal


def test_steering_moves_the_mel_only_after_the_frames_in_use(engine: Engine) -> None:
    """The demo vocoder has random weights, so the mel is the honest place to see a change."""
    p = params(engine, ChunkMode.SLIDER, slider_positions=[(0, 5)])
    a, b = (mel_source(engine.runner(), engine.model, p, p.seed, PipelineStats()) for _ in "ab")
    head = a.vocoder_frames(0, 60)
    np.testing.assert_array_equal(b.vocoder_frames(0, 60), head)
    assert engine.model.sliders is not None
    b.steer(engine.model.sliders.latent({0: -10}), 0.0, 0.0, salt=1)
    a_next, b_next = a.vocoder_frames(60, 300), b.vocoder_frames(60, 300)
    assert not np.array_equal(a_next[:, :3], b_next[:, :3])  # the next frames already move
    assert np.abs(a_next[:, 100:] - b_next[:, 100:]).mean() > 0.1  # then fully (log units)


def test_stereo_width_glides(engine: Engine) -> None:
    p = params(engine, spatial=Spatial.STEREO_MID_SIDE, stereo_width=1.0)
    s = LiveSession(engine.runner(), engine.model, p, 0.3)
    blocks = run_live(s, 44100 * 2, {5: control(1, stereo_width=0.0, transition_s=0.3)})
    audio = joined(blocks)
    assert np.abs(audio[0, -4000:] - audio[1, -4000:]).max() < 1e-6  # width 0: L == R
    start = sum(b.audio.shape[1] for b in blocks[:5])
    assert np.abs(audio[0, start : start + 500] - audio[1, start : start + 500]).max() > 1e-3


def test_stop_fades_out_and_ends(engine: Engine) -> None:
    for rate in (44100, 16000):
        p = params(engine, sample_rate=rate)
        s = LiveSession(engine.runner(), engine.model, p, 0.3)
        before = joined(run_live(s, rate))
        last = s.finish()
        assert s.finished
        fade = last.audio
        assert 0.04 * rate <= fade.shape[1] <= 0.07 * rate
        assert np.abs(fade[:, -10:]).max() < 2e-3  # faded to silence
        assert np.abs(fade[:, 0] - before[:, -1]).max() <= np.abs(np.diff(before)).max()
        with pytest.raises(RuntimeError):
            s.next_block()


def test_pacer_keeps_within_lookahead() -> None:
    pacer = Pacer(0.3)
    assert pacer.delay(10.0) == 0.0  # nothing sent: go
    pacer.sent(0.2, 10.0)
    pacer.sent(0.2, 10.05)
    assert pacer.ahead(10.05) == pytest.approx(0.35)
    assert pacer.delay(10.05) == pytest.approx(0.05)
    assert pacer.delay(10.2) == 0.0


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"sequence": 0}, "sequence"),
        ({"sequence": 3}, "sequence"),  # not above the last (3)
        ({"stereo_width": 1.0}, "stereo_width"),  # a mono session
        ({"evolution_amount": 1.5}, "evolution_amount"),
        ({"evolution_amount": float("nan")}, "evolution_amount"),
        ({"transition_s": -1.0}, "transition_s"),
        ({"transition_s": 1e9}, "transition_s"),
        ({"slider_positions": [(99, 1)]}, "sliders"),
        ({"slider_positions": [(0, 11)]}, "sliders"),
        ({"latent": [0.0] * 3}, "latent"),
        ({"latent": [float("inf")] * 64}, "latent"),
    ],
)
def test_control_validation_names_the_field(engine: Engine, kw: dict, field: str) -> None:  # type: ignore[type-arg]
    raw = RawControl(**{"sequence": 4, **kw})
    with pytest.raises(InvalidRequest) as info:
        check_control(raw, engine.model, params(engine), last_sequence=3)
    assert info.value.field == field


class CheapRunner:
    """A stand-in for the onnxruntime graphs with the same shapes (numpy, microseconds), to
    run an hour-scale session in seconds."""

    vocoder_buckets: tuple[int, ...] = ()
    stream_spec = None  # the block path: its vocode() is the stand-in
    provider = "numpy stand-in"
    fallbacks = 0

    def __init__(self, engine: Engine) -> None:
        m = engine.model
        self._hop, self._mels, self._frames = m.geometry.vocoder_hop, m.n_mels_voc, m.chunk_frames
        self._basis = np.random.default_rng(0).standard_normal((m.latent_dim, 128)) * 0.1

    def decode(self, z: np.ndarray) -> np.ndarray:
        level = np.abs(z @ self._basis)[:, :, None]  # (B, 128, 1)
        return np.repeat(level, self._frames, axis=2).astype(np.float32)

    def bridge(self, mel: np.ndarray, positions: np.ndarray) -> np.ndarray:
        idx = np.minimum(np.floor(positions).astype(int), mel.shape[2] - 1)
        return mel[:, : self._mels, idx]

    def vocode(self, mel: np.ndarray) -> np.ndarray:
        env = np.repeat(mel[0].mean(axis=0), self._hop)
        return (env * np.sin(np.arange(env.size) * 0.05)).astype(np.float32)

    def polyphase(self, rate: int) -> Polyphase:
        raise AssertionError("the cheap runner serves the vocoder rate only")


def test_a_ten_minute_session_holds_memory_flat(engine: Engine, report) -> None:  # type: ignore[no-untyped-def]
    """Time-compressed: ten minutes of audio as fast as the stand-in graphs go, a control
    every ten seconds; buffers and Python memory stay flat after the first minute."""
    p = params(engine, ChunkMode.SLIDER, evolution_amount=0.2)
    session = LiveSession(CheapRunner(engine), engine.model, p, 1.0, sliders={0: 5})
    rate = p.sample_rate
    tracemalloc.start()
    buffered: list[int] = []
    memory: list[int] = []
    sequence = 0
    try:
        while session.seconds < 600:
            if session.seconds >= 10 * (sequence + 1):
                sequence += 1
                position = int(sequence % 21) - 10
                raw = control(sequence, slider_positions=[(sequence % 3, position)])
                session.apply(check_control(raw, engine.model, p, sequence - 1))
            block = session.next_block()
            assert np.all(np.isfinite(block.audio))
            if session.samples % (rate * 30) < block.audio.shape[1]:
                buffered.append(session.buffered_frames)
                memory.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    growth = (max(memory[2:]) - memory[2]) / 1e6
    report(
        f"10-minute live session (stand-in graphs): {sequence} controls, mel buffer "
        f"{min(buffered)}-{max(buffered)} frames, Python memory growth after 1 min {growth:.2f} MB"
    )
    assert max(buffered) <= 2 * min(buffered[1:])
    assert growth < 1.0
