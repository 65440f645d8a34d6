"""Timeline sessions without a server: the audio is a function of the timeline position.

Playing 14 s from 0 with automation at fixed positions, then the same timeline from a seek
point, from an unaligned sample, and a loop played three times: every rendering's samples
equal the first playback's at the same positions, bit for bit, in every chunk mode, mono,
stereo (both kinds) and dual-seed, with and without a resampler. Plus the pieces that make
it so (a pure latent path, finite-memory filters and normaliser) and the refused positions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import signal

from distill_serve.server.engine.engine import Engine
from distill_serve.server.pipeline.dsp import CausalPeakNormaliser, SosFilter, sos_memory
from distill_serve.server.pipeline.live import RawControl, check_control
from distill_serve.server.pipeline.request import ChunkMode, Spatial
from distill_serve.server.pipeline.timeline import PositionRefused, TimelineSession
from distill_serve.server.pipeline.timeline_path import TimelinePath
from distill_serve.server.pipeline.trajectory import LatentPath
from tests.conftest import params


@dataclass(frozen=True)
class Case:
    mode: ChunkMode
    rate: int
    spatial: Spatial


CASES = [
    Case(ChunkMode.SLIDER, 48000, Spatial.MONO),  # resampled (44.1 -> 48 kHz)
    Case(ChunkMode.SLIDER, 44100, Spatial.STEREO_MID_SIDE),  # the vocoder's rate
    Case(ChunkMode.CROSSFADE, 22050, Spatial.DUAL_SEED),
    Case(ChunkMode.LATENT_INTERP, 16000, Spatial.STEREO_HAAS),
]
LENGTH_S = 14.0
#: (seconds, control): a glide, a width change, a change inside the loop, a late one. In
#: crossfade and latent_interp the latent targets come after the seek points (a start
#: message of those modes names no target).
AUTOMATION = [
    (2.0, {"slider_positions": [(0, 3)], "transition_s": 0.5}),
    (2.5, {"stereo_width": 0.4, "transition_s": 0.2}),
    (9.5, {"evolution_amount": 0.9}),
    (12.0, {"slider_positions": [(1, -2)]}),
]
TARGET = [0.3] * 64
AUTOMATION_UNSTEERED = [
    (2.5, {"stereo_width": 0.4, "transition_s": 0.2}),
    (9.5, {"latent": TARGET, "transition_s": 0.5}),
    (12.0, {"evolution_amount": 0.9}),
]


Automation = list[tuple[float, dict]]  # type: ignore[type-arg]


def automation(case: Case) -> Automation:
    return AUTOMATION if case.mode is ChunkMode.SLIDER else AUTOMATION_UNSTEERED


SEEK_S, UNALIGNED_S, LOOP_S = 5.5, 5.77, (8.0, 10.5)
STEREO = (Spatial.STEREO_MID_SIDE, Spatial.STEREO_HAAS)


def _start_values(case: Case, start: int, auto: Automation) -> dict:  # type: ignore[type-arg]
    """The start message of a session opened at ``start``: the automation in force there."""
    sliders = {0: 5}
    extra: dict = {}  # type: ignore[type-arg]
    for at, control in auto:
        if round(at * case.rate) < start:
            sliders.update(dict(control.get("slider_positions", [])))
            for key in ("evolution_amount", "stereo_width"):
                if key in control:
                    extra[key] = control[key]
    if case.spatial not in STEREO:
        extra.pop("stereo_width", None)
    if case.mode is not ChunkMode.SLIDER:
        return extra
    return {"slider_positions": list(sliders.items()), **extra}


def play(
    engine: Engine, case: Case, start: int, end: int, auto: Automation | None = None
) -> tuple[np.ndarray, TimelineSession]:
    """Samples ``[start, end)`` of the timeline, with the automation at or after ``start``."""
    auto = automation(case) if auto is None else auto
    kw = {"steps_between": 2} if case.mode is ChunkMode.LATENT_INTERP else {}
    values = _start_values(case, start, auto)
    p = params(
        engine, case.mode, duration_s=2.0, sample_rate=case.rate, spatial=case.spatial,
        **values, **kw,
    )  # fmt: skip
    session = TimelineSession(
        engine.runner(), engine.model, p, 0.3, start, dict(values.get("slider_positions", []))
    )
    sequence = 0
    for at, control in auto:
        position = round(at * case.rate)
        if position < start or ("stereo_width" in control and p.spatial not in STEREO):
            continue
        sequence += 1
        raw = RawControl(sequence=sequence, position=position, **control)  # type: ignore[arg-type]
        session.schedule(check_control(raw, engine.model, p, sequence - 1), position)
    blocks, at = [], start
    while at < end:
        block = session.next_block()
        assert block.position == at
        blocks.append(block.audio)
        at += block.audio.shape[1]
    return np.concatenate(blocks, axis=1)[:, : end - start], session


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.mode.value}-{c.rate}-{c.spatial.value}")
def test_seek_loop_and_unaligned_start_equal_playback_bit_for_bit(  # type: ignore[no-untyped-def]
    engine: Engine, case: Case, report
) -> None:
    rate = case.rate
    whole, _ = play(engine, case, 0, round(LENGTH_S * rate))
    renders = {
        "seek": (round(SEEK_S * rate), round(LENGTH_S * rate)),
        "unaligned": (round(UNALIGNED_S * rate) + 1, round(LENGTH_S * rate)),
        **{f"loop {i + 1}": (round(LOOP_S[0] * rate), round(LOOP_S[1] * rate)) for i in range(3)},
    }
    worst = 0.0
    for name, (a, b) in renders.items():
        audio, session = play(engine, case, a, b)
        assert session.priming_s > 1.0  # primed from well before the start
        assert audio.shape == (whole.shape[0], b - a), name
        worst = max(worst, float(np.abs(audio - whole[:, a:b]).max()))
        assert np.array_equal(audio, whole[:, a:b]), f"{name}: differs by up to {worst}"
    report(f"timeline {case}: seek, unaligned start and 3 loops bit-identical to playback")


def test_automation_changes_the_audio_at_its_position(engine: Engine) -> None:
    """The control at 9.5 s changes nothing before the vocoder's context reaches its block
    (about 0.25 s on the stand-in), and changes what follows."""
    case = CASES[0]
    rate = case.rate
    end = round(11.0 * rate)
    whole, _ = play(engine, case, 0, end)
    without, _ = play(engine, case, 0, end, [a for a in AUTOMATION if a[0] != 9.5])
    at = round(9.5 * rate)
    unchanged = at - round(0.4 * rate)
    assert np.array_equal(whole[:, :unchanged], without[:, :unchanged])
    assert not np.array_equal(whole[:, at + rate :], without[:, at + rate :])


def test_timeline_path_is_a_function_of_the_chunk() -> None:
    centre = np.random.default_rng(4).standard_normal(16).astype(np.float32)
    other = np.random.default_rng(5).standard_normal(16).astype(np.float32)

    def path(first: int) -> TimelinePath:
        """From chunk ``first``, started with the values in force there."""
        start = centre if first < 10 else other
        evolution = 0.5 if first < 20 else 0.8
        p = TimelinePath(ChunkMode.SLIDER, 9, 16, start, evolution, 0, 3, first_chunk=first)
        if first < 10:
            p.retarget(10, other, None, glide=4)
        if first < 20:
            p.retarget(20, None, 0.8, glide=1)
        return p

    p0 = path(0)
    from_zero = [p0.next() for _ in range(30)]
    for first in (5, 14, 21):
        p = path(first)
        assert all(np.array_equal(p.next(), from_zero[m]) for m in range(first, 30))
    # with no control, slider mode is the fixed-length request's path
    plain = TimelinePath(ChunkMode.SLIDER, 9, 16, centre, 0.5, 0, 3)
    request = LatentPath(ChunkMode.SLIDER, 9, 16, centre, 0.5, anchor_chunks=3)
    assert all(np.array_equal(plain.next(), request.next()) for _ in range(12))
    with pytest.raises(ValueError, match="past"):
        p0.retarget(3, other, None, 1)


def test_finite_memory_filter_and_normaliser() -> None:
    sos = signal.butter(8, 8000, fs=44100, output="sos")
    x = np.random.default_rng(1).standard_normal((1, 40000))
    running = SosFilter(sos, 1)
    finite = SosFilter(sos, 1, sos_memory(sos))
    cuts = [0, 4096, 8192, 20000, 40000]
    a = np.concatenate([running(x[:, i:j]) for i, j in itertools.pairwise(cuts)], axis=1)
    b = np.concatenate([finite(x[:, i:j]) for i, j in itertools.pairwise(cuts)], axis=1)
    assert np.abs(a - b).max() < 1e-9
    # the held peak forgets a loud burst after ``hold`` segments; the running one never does
    burst = np.full((1, 4096), 0.1, np.float32)
    burst[0, 100] = 1.0
    quiet = np.full((1, 4096 * 8), 0.1, np.float32)
    held = CausalPeakNormaliser(0.9, 64, segment=1024, hold=4)
    kept = CausalPeakNormaliser(0.9, 64, segment=1024)
    out_held = np.concatenate([held(burst), held(quiet)], axis=1)
    out_kept = np.concatenate([kept(burst), kept(quiet)], axis=1)
    assert out_held[0, -1] == pytest.approx(0.9, rel=1e-3)
    assert out_kept[0, -1] == pytest.approx(0.09, rel=1e-3)


def test_bad_positions_are_refused_and_the_session_plays_on(engine: Engine) -> None:
    p = params(engine, ChunkMode.SLIDER, sample_rate=48000)
    session = TimelineSession(engine.runner(), engine.model, p, 0.3, 48000 * 4)
    session.next_block()
    control = check_control(RawControl(sequence=1, evolution_amount=0.2), engine.model, p, 0)
    with pytest.raises(PositionRefused, match="in the past") as past:
        session.schedule(control, 48000 * 4)
    assert past.value.code == "OUT_OF_RANGE"
    session.schedule(control, 48000 * 6)
    with pytest.raises(PositionRefused, match="timeline order") as order:
        session.schedule(control, 48000 * 5)
    assert order.value.code == "INVALID_ARGUMENT"
    with pytest.raises(PositionRefused, match="ahead"):
        session.schedule(control, 48000 * 4000)
    assert session.next_block().audio.shape[1] > 0
