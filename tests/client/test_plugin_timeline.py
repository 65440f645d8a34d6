"""The plug-in follows the host's timeline (client/plugin, a timeline session through
libdistill): the C CLAP host plays a song with automation at fixed positions, as a bounce
(CLAP render extension offline: unpaced, run() waits), in real time from 0, and as a plan of
a stop/start, a seek and a loop played three times; every rendering's samples at the same
song positions equal the bounce's. A VST3 host nobody here wrote (Spotify's pedalboard, which
renders offline) renders the instrument with its default parameters, touching none: the
Python client's timeline session from 0, after the reported latency, sample for sample."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.client.test_plugin import LATENCY_S, PARAM_SLIDER0, _host, plugin, python_timeline
from tests.conftest import ServerThread

__all__ = ["plugin"]  # the module's fixture, shared with test_plugin.py

RATE = 48000
PARAM_EVOLUTION = 2
SONG = "0:20"  # 20 s of the song from 0
#: Automation at song positions: a slider, an evolution change inside the loop, a late slider.
AUTOMATION = [
    "--auto", f"{PARAM_SLIDER0}=3@2.0",
    "--auto", f"{PARAM_EVOLUTION}=0.8@11.0",
    "--auto", f"{PARAM_SLIDER0 + 1}=-2@15.5",
]  # fmt: skip
#: From 0 again, stop, seek to 7.5 s, loop 10-12.5 s three times (song seconds).
PLAN = "0:4,-:0.3,7.5:12,10:12.5,10:12.5,10:12.5"


def _segments(lines: list[str]) -> list[tuple[int, int]]:
    """(song position, output frame) where each segment of the plan began."""
    rows = [line.split() for line in lines if line.startswith("segment ")]
    return [(int(r[2]), int(r[3])) for r in rows]


def _underruns(lines: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.startswith("underrun_at")]


@pytest.mark.realtime
def test_transport_seek_loop_and_bounce_equal_playback(  # type: ignore[no-untyped-def]
    plugin: Path, server: ServerThread, tmp_path: Path, report: Callable[[str], None]
) -> None:
    latency = round(LATENCY_S * RATE)
    common = ["--rate", str(RATE), "--max-frames", "2048", *AUTOMATION]
    bounce_run, bounce, lines = _host(
        plugin, tmp_path, server.target, *common, "--transport", SONG, "--offline", "1"
    )
    assert bounce_run["render_offline"] == "1" and not _underruns(lines)
    assert np.abs(bounce[:latency]).max() == 0.0 and np.abs(bounce[latency:]).max() > 0.0
    song = bounce[latency:]  # song position p is output frame p + latency

    def check(audio: np.ndarray, lines: list[str], plan: str) -> list[str]:
        """Each playing segment equals the bounce from its start to its end, less the
        latency (a seek plays silence for the latency: positions before its start). A busy
        machine may make real-time playback underrun (the plug-in reports each one): the
        positions whose audio came late are silence, and the first 64 frames after such a gap
        fade in; every other sample still equals the bounce's at its position."""
        notes = []
        underruns = _underruns(lines)
        parts = plan.split(",")
        for (position, frame), part in zip(_segments(lines), parts, strict=True):
            if part.startswith("-"):
                continue
            a, b = (round(float(x) * RATE) for x in part.split(":"))
            end = frame + (b - a)  # output frames of this segment: [frame, end)
            assert np.abs(audio[frame : frame + latency]).max() == 0.0, part
            got = audio[frame + latency : end]
            want = song[position : position + len(got)]
            differs = (got != want).any(axis=1)
            if not differs.any():
                continue
            late = [u for u in underruns if frame <= u < end]
            first = position + int(np.flatnonzero(differs)[0])
            assert late, f"{part}: differs from the bounce from song position {first}, no underrun"
            silent = (got == 0).all(axis=1)
            fading = np.zeros(len(got), bool)  # 64 frames after each silent stretch
            for i in np.flatnonzero(silent[:-1] & ~silent[1:]) + 1:
                fading[i : i + 64] = True
            wrong = np.flatnonzero(differs & ~silent & ~fading)
            assert not wrong.size, (
                f"{part}: played samples differ from song position {position + wrong[0]} "
                f"({wrong.size} frames; underruns at output frames {late})"
            )
            played = ~differs & ~silent  # the samples that played, equal to the bounce's
            assert played.sum() >= RATE // 10, f"{part}: under 0.1 s played"
            notes.append(
                f"{part}: {len(late)} underruns on a busy machine, "
                f"{silent.sum() / RATE:.2f} s of late audio left silent, "
                f"{played.sum() / RATE:.2f} s played"
            )
        return notes

    _, played, played_lines = _host(plugin, tmp_path, server.target, *common, "--transport", SONG)
    notes = check(played, played_lines, SONG)
    _, planned, plan_lines = _host(plugin, tmp_path, server.target, *common, "--transport", PLAN)
    notes += check(planned, plan_lines, PLAN)
    report(
        "plug-in timeline (CLAP host, stand-in, 48 kHz): 20 s of real-time playback from 0, from 0"
        " again, a stop, a seek to 7.5 s and a 10-12.5 s loop played 3 times equal the offline"
        " bounce bit for bit" + (f" ({'; '.join(notes)})" if notes else "")
    )


_PEDALBOARD = """
import sys, time, numpy as np, pedalboard
plugin = pedalboard.load_plugin(sys.argv[1])
t0 = time.perf_counter()
audio = plugin([], duration=float(sys.argv[2]), sample_rate=48000, num_channels=2, buffer_size=1024)
print(time.perf_counter() - t0)
np.save(sys.argv[3], audio)
"""


def test_pedalboard_bounces_the_timeline_faster_than_real_time(  # type: ignore[no-untyped-def]
    plugin: Path, server: ServerThread, tmp_path: Path, report: Callable[[str], None]
) -> None:
    seconds, out = 8.0, tmp_path / "pedalboard.npy"
    proc = subprocess.run(
        [sys.executable, "-c", _PEDALBOARD, str(plugin / "bin/distill.vst3"), str(seconds),
         str(out)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "DISTILL_SERVER": server.target, "DISTILL_TOKEN": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    wall = float(proc.stdout.split()[-1])
    audio = np.load(out).T  # (frames, 2)
    latency = round(LATENCY_S * RATE)
    assert audio.shape == (round(seconds * RATE), 2)
    assert np.abs(audio[:latency]).max() == 0.0
    ref = python_timeline(
        server.target, len(audio) - latency, RATE, seed=7, sliders=dict.fromkeys(range(8), 0)
    )
    np.testing.assert_array_equal(audio[latency:], ref)
    report(
        f"plug-in VST3 in pedalboard (offline, defaults untouched): {seconds:g} s rendered in "
        f"{wall:.2f} s ({seconds / wall:.1f}x real time), the timeline sample for sample"
    )
