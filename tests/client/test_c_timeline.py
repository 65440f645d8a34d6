"""libdistill's timeline sessions (distill.h, API version 2), from Python through ctypes
against a live server: an offline (unpaced) render through distill_render_at and
distill_wait_at, a render that seeks into the middle, and the Python client's timeline
session with the same automation give the same samples; positions before a session's start
are silence; a control for a position already rendered is counted as refused and the session
plays on; positioned controls need a timeline session."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distill_serve.client import Client
from tests.conftest import ROOT, ServerThread

sys.path.insert(0, str(ROOT / "client" / "c" / "python"))
import distill_c

RATE = 48000
BLOCK = 1024


@pytest.fixture(scope="module")
def library(client_build: Path) -> distill_c.Library:
    return distill_c.Library(client_build / "c" / "libdistill.so")


def config(library: distill_c.Library, server: ServerThread, start: int, **fields: object):  # type: ignore[no-untyped-def]
    return library.config(
        server=server.target, mode=distill_c.MODE_SLIDER, sliders=[5], seed=11,
        sample_rate=RATE, channels=2, max_frames=4096, timeline=1, start_position=start,
        **fields,
    )  # fmt: skip


def offline(
    library: distill_c.Library, server: ServerThread, start: int, end: int
) -> tuple[np.ndarray, distill_c.Status, float]:
    """The timeline ``[start, end)`` rendered offline, the slider move at 4 s included."""
    with distill_c.Session(library, config(library, server, start, unpaced=1)) as session:
        if start <= 4 * RATE:
            assert session.set_slider_at(1, -3, 4 * RATE) == distill_c.OK
        blocks, t0 = [], time.perf_counter()
        for position in range(start, end, BLOCK):
            assert session.wait_at(BLOCK, position, 60), session.status().last_error
            audio, played = session.render_at(BLOCK, position)
            assert played == BLOCK
            blocks.append(audio)
        wall = time.perf_counter() - t0
        return np.concatenate(blocks, axis=1)[:, : end - start], session.status(), wall


def test_offline_seek_and_python_client_agree(  # type: ignore[no-untyped-def]
    library: distill_c.Library, server: ServerThread, report
) -> None:
    whole, status, wall = offline(library, server, 0, 8 * RATE)
    assert (status.underruns, status.frames_late, status.controls_refused) == (0, 0, 0)
    seek, _, _ = offline(library, server, 3 * RATE, 8 * RATE)
    assert np.array_equal(seek, whole[:, 3 * RATE :])
    with Client(server.target, timeout=120) as client:
        session = client.live(
            "slider", seed=11, sliders={0: 5}, sample_rate=RATE, encoding="float32",
            spatial="stereo", start_position=0, unpaced=True,
        )  # fmt: skip
        session.set_sliders({1: -3}, position=4 * RATE)
        session.stop(position=8 * RATE)
        python = np.concatenate([block.audio for block in session], axis=1)
    n = 8 * RATE - 4096  # before the Python session's fade-out
    assert np.array_equal(python[:, :n], whole[:, :n])
    report(f"libdistill offline timeline render of 8 s (stand-in): {wall:.2f} s")


def test_before_the_start_is_silence_and_a_late_control_is_refused(
    library: distill_c.Library, server: ServerThread
) -> None:
    start = 2 * RATE
    with distill_c.Session(library, config(library, server, start, unpaced=1)) as session:
        assert session.wait_at(BLOCK, start - BLOCK // 2, 60)
        audio, played = session.render_at(BLOCK, start - BLOCK // 2)
        assert played == BLOCK // 2
        assert not audio[:, : BLOCK // 2].any() and audio[:, BLOCK // 2 :].any()
        position = start + BLOCK // 2
        for _ in range(40):  # 1 s of audio: the server has made more than that by now
            session.wait_at(BLOCK, position, 60)
            session.render_at(BLOCK, position)
            position += BLOCK
        assert session.set_evolution_at(0.9, start) == distill_c.OK  # long rendered
        deadline = time.monotonic() + 10
        while session.status().controls_refused == 0 and time.monotonic() < deadline:
            session.wait_at(BLOCK, position, 60)
            session.render_at(BLOCK, position)
            position += BLOCK
        status = session.status()
        assert status.controls_refused == 1
        assert b"in the past" in status.last_error
        assert session.wait_at(BLOCK, position, 60)  # still playing
        assert session.render_at(BLOCK, position)[1] == BLOCK


def test_positions_need_a_timeline_session(
    library: distill_c.Library, server: ServerThread
) -> None:
    plain = library.config(server=server.target, sample_rate=RATE)
    with distill_c.Session(library, plain) as session:
        assert session.seek(RATE) == distill_c.ERROR_ARGUMENT
        assert session.set_slider_at(0, 2, RATE) == distill_c.ERROR_ARGUMENT
        assert session.render_at(BLOCK, 0)[1] == 0
    bad = library.config(server=server.target, sample_rate=RATE, start_position=RATE)
    with pytest.raises(ValueError, match="timeline"):
        distill_c.Session(library, bad)
