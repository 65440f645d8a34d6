"""A live session's control mailbox: controls that come faster than blocks merge into one
that leaves the session where the controls one by one would; a bad control is refused when
it comes."""

from __future__ import annotations

import numpy as np
import pytest

from distill_serve.server.engine.engine import Engine
from distill_serve.server.pipeline.controls import ControlMailbox, merge
from distill_serve.server.pipeline.live import LiveControl, LiveSession, RawControl
from distill_serve.server.pipeline.request import ChunkMode, InvalidRequest, Spatial
from tests.conftest import params


def control(sequence: int, **kw: object) -> LiveControl:
    fields: dict = dict(latent=None, sliders=None, evolution_amount=None, stereo_width=None,
                        transition_s=0.0, stop=False)  # fmt: skip
    fields.update(kw)
    return LiveControl(sequence=sequence, **fields)


def test_merge_keeps_the_last_value_of_each_field_and_every_slider_move() -> None:
    z = np.ones(64, np.float32)
    merged = merge(
        merge(control(1, sliders={0: 3, 1: 2}, evolution_amount=0.2, stereo_width=1.0),
              control(2, latent=z, transition_s=0.5)),
        control(3, sliders={1: -4}, stop=True),
    )  # fmt: skip
    assert merged.sequence == 3 and merged.stop
    assert merged.sliders == {0: 3, 1: -4} and not merged.latent_last  # the moves came last
    assert merged.evolution_amount == 0.2 and merged.stereo_width == 1.0
    assert merged.transition_s == 0.0  # the last control that set something
    latent_after = merge(control(1, sliders={2: 5}), control(2, latent=z))
    assert latent_after.latent_last and latent_after.sliders == {2: 5}
    assert merge(control(1, stop=True), control(2, evolution_amount=0.4)).stop


def test_merged_controls_play_what_the_controls_one_by_one_play(engine: Engine) -> None:
    p = params(engine, ChunkMode.SLIDER, spatial=Spatial.STEREO_MID_SIDE)
    flood = [
        RawControl(
            sequence=i + 1,
            slider_positions=[(i % 4, (i % 21) - 10)],
            evolution_amount=(i % 10) / 10,
            stereo_width=(i % 20) / 10,
        )
        for i in range(200)
    ] + [
        RawControl(sequence=201, latent=[0.1] * 64),
        RawControl(sequence=202, slider_positions=[(5, 7)]),
    ]
    one_by_one, merged = (LiveSession(engine.runner(), engine.model, p, 0.3) for _ in range(2))
    for s in (one_by_one, merged):
        s.next_block()
    box = ControlMailbox(engine.model, p)
    for raw in flood:
        box.put(raw)
        check = ControlMailbox(engine.model, p)
        check.last_sequence = raw.sequence - 1
        check.put(raw)
        one_by_one.apply(check.take())  # type: ignore[arg-type]
    assert box.merged == len(flood) - 1
    merged.apply(box.take())  # type: ignore[arg-type]
    assert box.take() is None
    a = np.concatenate([one_by_one.next_block().audio for _ in range(6)], axis=1)
    b = np.concatenate([merged.next_block().audio for _ in range(6)], axis=1)
    np.testing.assert_allclose(a[:, -2000:], b[:, -2000:], atol=1e-5)  # after the glides


def test_a_bad_control_is_refused_when_it_comes(engine: Engine) -> None:
    box = ControlMailbox(engine.model, params(engine))
    box.put(RawControl(sequence=1, evolution_amount=0.5))
    with pytest.raises(InvalidRequest):
        box.put(RawControl(sequence=1, evolution_amount=0.4))  # not above the last
    with pytest.raises(InvalidRequest):
        box.put(RawControl(sequence=2, stereo_width=1.0))  # a mono session
    assert box.take() is not None and box.last_sequence == 1
