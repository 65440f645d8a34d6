"""The Distill app's stereo (Haas delay, mid/side width, depth echo) as a spatial mode: the
stage against a whole-signal reference written from the app's description, block by block
equal to whole, the request's ranges and defaults, the pipeline, and live width glides."""

from __future__ import annotations

import numpy as np
import pytest

from distill_serve.server.engine.engine import Engine
from distill_serve.server.pipeline.live import LiveSession, RawControl, check_control
from distill_serve.server.pipeline.request import InvalidRequest, Spatial
from distill_serve.server.pipeline.spatial import HaasStereo
from tests.conftest import generate, params


def app_stereo(mono: np.ndarray, width: float, depth: float, rate: int) -> np.ndarray:
    """The app's stereo on a whole signal (``../shared/DISTILL.md``): right = mono delayed
    int(15 ms) samples, L/R = mid +- width * side, then depth >= 0.01 adds both channels
    delayed int(40 depth ms) at gain 0.15 depth."""
    d = int(15.0 * rate / 1000.0)
    right = np.zeros_like(mono)
    right[d:] = mono[:-d]
    mid, side = (mono + right) * 0.5, (mono - right) * 0.5
    out = np.stack([mid + width * side, mid - width * side])
    e = int(depth * 40.0 * rate / 1000.0)
    if depth >= 0.01 and 1 <= e < mono.size:
        out[:, e:] += depth * 0.15 * out[:, :-e].copy()
    return out


@pytest.mark.parametrize(("width", "depth", "rate"), [(0.7, 0.5, 48000), (1.5, 1.0, 22050)])
def test_haas_stereo_is_the_apps_stereo_in_any_blocks(
    width: float, depth: float, rate: int
) -> None:
    mono = np.random.default_rng(2).standard_normal((1, 30000)).astype(np.float32)
    expected = app_stereo(mono[0].astype(np.float64), width, depth, rate)
    whole = HaasStereo(width, depth, rate)(mono)
    np.testing.assert_allclose(whole, expected, atol=1e-5)
    stage = HaasStereo(width, depth, rate)
    pieces = np.split(mono, [1, 500, 700, 2000, 29999], axis=-1)  # shorter and longer than 15 ms
    np.testing.assert_allclose(
        np.concatenate([stage(p) for p in pieces], axis=-1), whole, atol=1e-6
    )


def test_width_zero_is_mono_and_depth_zero_adds_no_echo() -> None:
    mono = np.random.default_rng(3).standard_normal((1, 9000)).astype(np.float32)
    narrow = HaasStereo(0.0, 0.0, 48000)(mono)
    np.testing.assert_array_equal(narrow[0], narrow[1])
    dry = HaasStereo(1.0, 0.0, 48000)(mono)  # width 1, no depth: L = the signal, R = delayed
    np.testing.assert_allclose(dry[0], mono[0], atol=1e-6)
    np.testing.assert_allclose(dry[1, 720:], mono[0, :-720], atol=1e-6)
    assert np.abs(dry[1, :720]).max() == 0.0


def test_width_glides_without_a_step() -> None:
    mono = np.ones((1, 4000), np.float32)
    stage = HaasStereo(1.5, 0.0, 48000)
    first = stage(mono)
    stage.set_width(0.0, 2000)
    after = stage(mono)
    spread = np.abs(
        np.concatenate([first, after], axis=1)[0] - np.concatenate([first, after], axis=1)[1]
    )
    assert np.abs(np.diff(spread[3000:])).max() < 1e-3  # no jump where the glide starts
    np.testing.assert_allclose(after[0, 2000:], after[1, 2000:], atol=1e-6)  # then mono


def test_defaults_and_ranges_are_the_apps(engine: Engine) -> None:
    p = params(engine, spatial=Spatial.STEREO_HAAS)
    assert (p.stereo_width, p.stereo_depth, p.channels) == (0.7, 0.5, 2)
    assert params(engine, spatial=Spatial.STEREO_HAAS, stereo_width=1.5).stereo_width == 1.5
    for kw, field in (
        ({"spatial": Spatial.STEREO_HAAS, "stereo_width": 1.6}, "stereo_width"),
        ({"spatial": Spatial.STEREO_HAAS, "stereo_depth": 1.1}, "stereo_depth"),
        ({"spatial": Spatial.STEREO_HAAS, "stereo_depth": float("nan")}, "stereo_depth"),
        ({"spatial": Spatial.STEREO_MID_SIDE, "stereo_depth": 0.5}, "stereo_depth"),
        ({"stereo_depth": 0.5}, "stereo_depth"),  # mono
    ):
        with pytest.raises(InvalidRequest) as info:
            params(engine, **kw)
        assert info.value.field == field
    assert params(engine, spatial=Spatial.STEREO_MID_SIDE, stereo_width=1.8).stereo_width == 1.8


def test_the_pipeline_delays_the_right_channel_15_ms(engine: Engine) -> None:
    rate = engine.model.vocoder_rate
    p = params(
        engine, spatial=Spatial.STEREO_HAAS, stereo_width=1.0, stereo_depth=0.0, sample_rate=rate
    )
    audio = generate(engine, p)
    d = int(15.0 * rate / 1000.0)
    assert audio.shape == (2, 2 * rate)
    assert np.corrcoef(audio[0, :-d], audio[1, d:])[0, 1] > 0.999
    assert np.corrcoef(audio[0], audio[1])[0, 1] < 0.9  # not the same signal unshifted
    assert np.abs(audio).max() <= engine.model.peak_target + 1e-6


def test_a_live_haas_session_takes_width_in_its_range(engine: Engine) -> None:
    p = params(engine, spatial=Spatial.STEREO_HAAS)
    good = check_control(RawControl(sequence=1, stereo_width=1.5), engine.model, p, 0)
    assert good.stereo_width == 1.5
    with pytest.raises(InvalidRequest, match=r"\[0, 1.5\]"):
        check_control(RawControl(sequence=1, stereo_width=1.6), engine.model, p, 0)
    session = LiveSession(engine.runner(), engine.model, p, 0.3)
    session.next_block()
    session.apply(good)
    assert session.next_block().audio.shape[0] == 2
