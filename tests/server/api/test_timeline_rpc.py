"""Timeline sessions through a real server and the Python client: a seek, a loop and an
offline (unpaced) bounce give the samples of real-time playback at the same positions;
bad positions are refused with a ControlRefused while the session plays on; a bounce the
client abandons leaves no session behind; paced sessions report their continuity."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from distill_serve.client import Client, DistillError
from distill_serve.server.engine.engine import Engine
from tests.conftest import ServerThread, start_server

RATE = 48000
#: (seconds, slider moves, transition): automation at fixed positions
AUTOMATION = [(1.0, {0: 3}, 0.5), (6.0, {1: -2}, 0.0)]


@pytest.fixture(scope="module")
def timeline_server(engine: Engine) -> Iterator[ServerThread]:
    s = start_server(engine, max_concurrent=3, max_live_s=120.0)
    yield s
    s.stop()


def render(
    target: str, start_s: float, end_s: float, unpaced: bool = True
) -> tuple[np.ndarray, float, int]:
    """Timeline ``[start_s, end_s)`` (the stop at ``end_s`` is sent with its position):
    the audio from ``start_s``, the wall time and the first block's position."""
    start = round(start_s * RATE)
    sliders = {0: 5}
    for at, moves, _ in AUTOMATION:
        if at < start_s:
            sliders.update(moves)
    with Client(target, timeout=120) as client:
        session = client.live(
            "slider", seed=11, sliders=sliders, encoding="float32", sample_rate=RATE,
            start_position=start, unpaced=unpaced,
        )  # fmt: skip
        for at, moves, glide in AUTOMATION:
            if start_s <= at < end_s:
                session.set_sliders(moves, glide, position=round(at * RATE))
        session.stop(position=round(end_s * RATE))
        t0 = time.perf_counter()
        blocks = list(session)
        wall = time.perf_counter() - t0
    assert session.end_reason == "stop" and not session.refusals
    assert [b.position for b in blocks[1:]] == [b.position + b.audio.shape[1] for b in blocks[:-1]]
    return np.concatenate([b.audio for b in blocks], axis=1), wall, blocks[0].position


@pytest.mark.realtime
def test_seek_loop_and_bounce_equal_real_time_playback(  # type: ignore[no-untyped-def]
    timeline_server: ServerThread, report
) -> None:
    played, wall_played, first = render(timeline_server.target, 0.0, 8.0, unpaced=False)
    assert first == 0 and wall_played > 7.0  # paced: real time
    bounce, wall_bounce, _ = render(timeline_server.target, 0.0, 8.0)
    n = round(7.9 * RATE)  # before the fade-out at the stop
    assert np.array_equal(bounce[:, :n], played[:, :n])
    seek, _, at = render(timeline_server.target, 3.5, 8.0)
    assert at == round(3.5 * RATE)
    assert np.array_equal(seek[:, : n - at], played[:, at:n])
    loop = round(5.0 * RATE), round(7.0 * RATE)
    for _ in range(3):
        audio, _, at = render(timeline_server.target, 5.0, 7.5)
        assert np.array_equal(audio[:, : loop[1] - loop[0]], played[:, loop[0] : loop[1]])
    report(
        f"timeline bounce of 8 s on the stand-in: {wall_bounce:.2f} s "
        f"({8.0 / wall_bounce:.1f}x real time; real-time playback {wall_played:.2f} s); "
        "seek and 3 loops bit-identical to playback"
    )


def test_bad_positions_are_refused_and_the_session_plays_on(
    timeline_server: ServerThread,
) -> None:
    with Client(timeline_server.target, timeout=60) as client:
        session = client.live(
            "slider", encoding="float32", sample_rate=RATE, start_position=RATE * 10
        )
        blocks, sent = [], {}
        for block in session:
            blocks.append(block)
            if len(blocks) == 2:
                sent["past"] = session.set_evolution(0.2, position=RATE * 10)
                sent["ok"] = session.set_evolution(0.3, position=RATE * 14)
                sent["order"] = session.set_evolution(0.4, position=RATE * 13)
                sent["ahead"] = session.set_evolution(0.4, position=RATE * 100_000)
            if len(blocks) == 12:
                session.stop()
    codes = {r.sequence: r.code for r in session.refusals}
    assert codes == {
        sent["past"]: "OUT_OF_RANGE",
        sent["order"]: "INVALID_ARGUMENT",
        sent["ahead"]: "OUT_OF_RANGE",
    }
    assert "in the past" in session.refusals[0].message
    assert len(blocks) >= 12 and session.end_reason == "stop"


def test_a_position_on_a_plain_live_session_is_refused(timeline_server: ServerThread) -> None:
    with Client(timeline_server.target, timeout=60) as client:
        session = client.live("slider", encoding="float32")
        for count, _ in enumerate(session, 1):
            if count == 1:
                bad = session.set_evolution(0.2, position=RATE)
            if count == 6:
                session.stop()
    assert [(r.sequence, r.code) for r in session.refusals] == [(bad, "INVALID_ARGUMENT")]
    assert "timeline session" in session.refusals[0].message
    assert session.end_reason == "stop"


def test_a_start_beyond_the_longest_session_is_invalid(timeline_server: ServerThread) -> None:
    with Client(timeline_server.target, timeout=60) as client:
        session = client.live("slider", start_position=RATE * 10_000, sample_rate=RATE)
        with pytest.raises(DistillError) as err:
            list(session)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "start_position" in str(err.value)


def test_an_abandoned_bounce_leaves_no_session(timeline_server: ServerThread) -> None:
    active = {"rpc": "GenerateLive"}
    with Client(timeline_server.target, timeout=60) as client:
        session = client.live("slider", start_position=0, unpaced=True, encoding="float32")
        for count, _ in enumerate(session):
            assert timeline_server.metric("distill_active_generations", active) == 1
            if count == 10:
                break
        session.close()
    deadline = time.monotonic() + 10
    while timeline_server.metric("distill_active_generations", active) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert timeline_server.metric("distill_active_generations", active) == 0


def test_paced_sessions_report_their_continuity(timeline_server: ServerThread) -> None:
    names = ("distill_live_block_interval_seconds_count", "distill_live_ahead_seconds_count")
    before = [timeline_server.metric(name) for name in names]
    render(timeline_server.target, 0.0, 2.0, unpaced=False)
    after = [timeline_server.metric(name) for name in names]
    assert all(b - a >= 10 for a, b in zip(before, after, strict=True))
    # an unpaced bounce has no playout time: it adds to neither
    render(timeline_server.target, 0.0, 2.0)
    assert [timeline_server.metric(name) for name in names] == after
