"""The Distill instrument plug-in (client/plugin, DPF): built as CLAP, VST3 and LV2 by
``make -C client/plugin``, loaded headlessly. A C CLAP host (client/plugin/tests/clap_host.c)
plays it against a live server in random buffer sizes, paced in real time: the audio is the
Python client's timeline session until the first parameter change, the change lands at the
position it was sent for, stop fades out, the server address is plug-in state. (Transport,
seek, loop and offline bounces: test_plugin_timeline.py.)"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from distill_serve.client import Client
from distill_serve.server.api.server import ServerConfig
from distill_serve.server.engine.engine import Engine
from tests import shared_builds
from tests.conftest import ServerThread, free_port, shared_path

PARAM_PLAY, PARAM_SEED, PARAM_SLIDER0 = 0, 1, 4
#: The plug-in's latency: lookahead 0.3 s + jitter 0.05 s + the timeline's control margin 0.6 s
LATENCY_S = 0.95


def python_timeline(target: str, frames: int, rate: int, **spec: object) -> np.ndarray:
    """The first ``frames`` of the Python client's timeline session from 0 with the plug-in's
    settings (stereo float32, unpaced), as ``(frames, 2)``."""
    with Client(target, timeout=120) as client:
        session = client.live(
            "slider", encoding="float32", spatial="stereo", sample_rate=rate,
            start_position=0, unpaced=True, **spec,
        )  # fmt: skip
        session.stop(position=frames + rate)
        blocks, got = [], 0
        for block in session:
            blocks.append(block.audio)
            got += block.audio.shape[1]
            if got >= frames:
                session.close()
                break
    return np.concatenate(blocks, axis=1).T[:frames]


@pytest.fixture(scope="module")
def plugin(client_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make -C client/plugin`` (out of tree, OUT=<shared dir>, reusing the client build),
    once per run."""
    if not shared_builds.DPF.is_file():
        pytest.skip("dpf-source not installed; .ci/run installs it (apt-get install dpf-source)")
    return shared_builds.ensure(
        shared_path(tmp_path_factory, "plugin"), "built",
        lambda out: shared_builds.build_plugin(out, client_build),
    )  # fmt: skip


def _host(
    plugin: Path, tmp_path: Path, server: str, *args: str, env: dict[str, str] | None = None
) -> tuple[dict[str, str], np.ndarray, list[str]]:
    out = tmp_path / "clap.f32"
    proc = subprocess.run(
        [str(plugin / "build/dpf/clap_host"), str(plugin / "bin/distill.clap"), "-o", str(out),
         *args],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "DISTILL_SERVER": server, "DISTILL_TOKEN": "", **(env or {})},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    values = dict(line.split(" ", 1) for line in lines if " " in line)
    return values, np.fromfile(out, np.float32).reshape(-1, 2), lines


def test_builds_every_format(plugin: Path) -> None:
    bin_dir = plugin / "bin"
    assert (bin_dir / "distill.clap").is_file()
    assert (bin_dir / "distill.vst3/Contents/x86_64-linux/distill.so").is_file()
    assert (bin_dir / "distill.lv2/distill_dsp.so").is_file()
    assert (bin_dir / "distill.lv2/manifest.ttl").is_file()


@pytest.mark.realtime
@pytest.mark.parametrize(
    ("rate", "seconds"), [(48000, 20.0), (96000, 8.0), (44100, 6.0), (88200, 6.0)]
)
def test_clap_host_plays_the_python_clients_audio(
    plugin: Path,
    server: ServerThread,
    tmp_path: Path,
    rate: int,
    seconds: float,
    report: Callable[[str], None],
) -> None:
    """Random buffers of 1..4096 frames in real time; slider 2 moves at 40 % of the run, play
    goes off at 80 %. The host then plays on until 0.5 s after the Status meter reads stopped
    (the fade-out played and the ring drained), however long a busy machine takes."""
    change_at, stop_at = 0.4 * seconds, 0.8 * seconds
    r, audio, lines = _host(
        plugin, tmp_path, server.target, "--rate", str(rate), "--seconds", str(seconds + 60),
        "--after-stopped", "0.5",
        "--param", f"{PARAM_SLIDER0 + 2}=-6@{change_at}", "--param", f"{PARAM_PLAY}=0@{stop_at}",
    )  # fmt: skip
    assert r["plugin_id"] == "org.distill-serve.distill" and "feature instrument" in lines
    latency = int(r["latency_frames"])
    assert latency == round(LATENCY_S * rate)  # clap.latency
    params = {
        int(line.split()[1]): line.split(" ", 2)[2] for line in lines if line.startswith("param ")
    }
    assert params[PARAM_PLAY].startswith("Play|0|1|1") and params[PARAM_SEED] == "Seed|0|9999|7"
    assert params[PARAM_SLIDER0] == "brightness|-10|10|0"  # named from the server's model info
    assert not np.isnan(audio).any() and np.abs(audio).max() <= 1.0
    sent = [line.split() for line in lines if line.startswith("param_sent")]
    changed, stopped = int(sent[0][2]), int(sent[1][2])
    # Until the slider moved, the Python client's timeline session with the plug-in's
    # defaults: the host has no transport, so the plug-in plays the timeline from 0 as it
    # processes, position p at output frame p + latency.
    start = int(np.flatnonzero(np.abs(audio).sum(axis=1) > 0)[0])
    underruns = [int(line.split()[1]) for line in lines if line.startswith("underrun_at")]
    assert start == latency or underruns
    spec = {"seed": 7, "sliders": dict.fromkeys(range(8), 0)}
    ref = python_timeline(server.target, stopped - latency, rate, **spec)
    # Until the change, every sample that played equals the Python client's. An underrun,
    # which only a machine too busy to keep up causes, leaves the late positions silent and
    # fades in over the next 64 frames (as in test_plugin_timeline.py); the plug-in's
    # Underruns meter says where.
    got, want = audio[latency:changed], ref[: changed - latency]
    differs = (got != want).any(axis=1)
    silent = (got == 0).all(axis=1)
    fading = np.zeros(len(got), bool)
    for i in np.flatnonzero(silent[:-1] & ~silent[1:]) + 1:
        fading[i : i + 64] = True
    wrong = np.flatnonzero(differs & ~silent & ~fading)
    assert not wrong.size, (latency + int(wrong[0]), wrong.size, underruns)
    assert not differs.any() or underruns, "differs from the Python client's with no underrun"
    played = int((~differs & ~silent).sum())
    assert played > rate // 4, (played, underruns, start, changed)
    report(
        f"plug-in (CLAP host) at {rate} Hz: latency {latency} frames, {len(underruns)} underruns"
        f" in {len(audio) / rate:.1f} s of random buffers of 1..4096 frames; equal to the Python"
        f" client's session over {played} played frames"
    )
    if underruns:
        return  # where the change is heard and how stop sounds need the audio unfaded
    # Where the change lands: at the position it was sent for (the buffer's, `changed`): from
    # the first decoder chunk after the server's block that holds it (chunks start every
    # 0.5 s), heard up to ~0.3 s earlier through the vocoder's look-ahead.
    differs = np.flatnonzero(
        np.abs(audio[latency:stopped] - ref[: stopped - latency]).max(axis=1) > 0
    )
    lands = int(differs[0])  # a timeline position
    assert changed - 0.4 * rate <= lands <= changed + 0.8 * rate, (lands, changed)
    report(
        f"plug-in (CLAP host) at {rate} Hz: a parameter change sent for position {changed} "
        f"changes the audio from position {lands}"
    )
    # Play off: the server's fade-out, then silence to the end.
    tail = audio[stopped:]
    assert np.abs(tail[-rate // 2 :]).max() == 0.0
    last = int(np.flatnonzero(np.abs(tail).sum(axis=1) > 0)[-1])
    assert np.abs(tail[last - 16 : last + 1]).max() < 0.05


def _statuses(lines: list[str]) -> list[int]:
    return [int(line.split()[2]) for line in lines if line.startswith("status_at")]


def test_server_gone_and_back(plugin: Path, engine: Engine, tmp_path: Path) -> None:
    """The server stops mid-session: the Status meter goes from playing (2) to connecting (0)
    and Underruns counts the loss; a new server on the same port: playing again, with audio,
    without the host doing anything. The host plays until 2 s after it is playing again
    (`--after-recovery`), however long the reconnect takes on a busy machine."""
    port = free_port()
    first = ServerThread(ServerConfig(port=port), engine)
    out = tmp_path / "gone.f32"
    host = subprocess.Popen(
        [str(plugin / "build/dpf/clap_host"), str(plugin / "bin/distill.clap"), "-o", str(out),
         "--seconds", "120", "--after-recovery", "2"],
        stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, DISTILL_SERVER=f"127.0.0.1:{port}", DISTILL_TOKEN=""),
    )  # fmt: skip
    try:
        time.sleep(3)
        first.stop()
        time.sleep(3)
        second = ServerThread(ServerConfig(port=port), engine)
        stdout, _ = host.communicate(timeout=180)
        second.stop()
    finally:
        if host.poll() is None:
            host.kill()
    assert host.returncode == 0
    lines = stdout.splitlines()
    statuses = _statuses(lines)
    assert 2 in statuses, statuses
    gone = statuses.index(0, statuses.index(2))  # connecting after playing
    assert 2 in statuses[gone:], statuses  # and playing again
    assert any(line.startswith("underrun_at") for line in lines)
    audio = np.fromfile(out, np.float32).reshape(-1, 2)
    assert not np.isnan(audio).any() and np.abs(audio[-48000:]).max() > 0.0


def test_bad_token_is_a_failed_status(plugin: Path, engine: Engine, tmp_path: Path) -> None:
    server = ServerThread(ServerConfig(port=0, auth_tokens=("right-token",)), engine)
    try:
        r, audio, lines = _host(
            plugin, tmp_path, server.target, "--seconds", "2",
            env={"DISTILL_TOKEN": "wrong-token"},
        )  # fmt: skip
    finally:
        server.stop()
    assert _statuses(lines)[-1] == 4  # failed, for good
    assert np.abs(audio).max() == 0.0 and int(r["frames"]) >= 2 * 48000


def test_server_address_is_plugin_state(plugin: Path, server: ServerThread, tmp_path: Path) -> None:
    """A project saved against one server: the saved state names it, and loading that state
    into an instance whose environment points elsewhere plays from it."""
    dead = f"127.0.0.1:{free_port()}"
    saved = tmp_path / "project.state"
    r, audio, _ = _host(plugin, tmp_path, dead, "--seconds", "2", "--save-state", str(saved))
    assert f"|server|{dead}|" in r["state"] and np.abs(audio).max() == 0.0  # nothing there
    saved.write_bytes(saved.read_bytes().replace(dead.encode(), server.target.encode()))
    r2, audio2, _ = _host(plugin, tmp_path, dead, "--seconds", "3", "--load-state", str(saved))
    assert r2["state_loaded"] == "1" and f"|server|{server.target}|" in r2["state"]
    assert np.abs(audio2).max() > 0.0


def test_vst3_factory_loads(plugin: Path) -> None:
    """The VST3 binary loads as a Linux host loads it (ModuleEntry, then GetPluginFactory);
    its IPluginFactory (a COM vtable: FUnknown's three methods, then getFactoryInfo,
    countClasses, getClassInfo) lists the instrument."""
    lib = ctypes.CDLL(str(plugin / "bin/distill.vst3/Contents/x86_64-linux/distill.so"))
    lib.ModuleEntry.restype, lib.ModuleEntry.argtypes = ctypes.c_bool, [ctypes.c_void_p]
    assert lib.ModuleEntry(None)
    lib.GetPluginFactory.restype = ctypes.c_void_p
    factory = lib.GetPluginFactory()
    assert factory
    vtable = ctypes.cast(ctypes.cast(factory, ctypes.POINTER(ctypes.c_void_p))[0],
                         ctypes.POINTER(ctypes.c_void_p))  # fmt: skip
    count = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)(vtable[4])(factory)
    assert count >= 1

    class ClassInfo(ctypes.Structure):
        _fields_ = [("cid", ctypes.c_char * 16), ("cardinality", ctypes.c_int32),
                    ("category", ctypes.c_char * 32), ("name", ctypes.c_char * 64)]  # fmt: skip

    get_info = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32,
                                ctypes.POINTER(ClassInfo))(vtable[5])  # fmt: skip
    infos = []
    for i in range(count):
        info = ClassInfo()
        assert get_info(factory, i, ctypes.byref(info)) == 0  # kResultOk
        infos.append((info.category.decode(), info.name.decode()))
    assert ("Audio Module Class", "Distill") in infos
    lib.ModuleExit.restype = ctypes.c_bool
    assert lib.ModuleExit()


_FTZ_PROBE = """
import ctypes, sys
def ftz():  # flush-to-zero or denormals-are-zero: the smallest normal halved is 0
    return sys.float_info.min / 2.0 == 0.0
assert not ftz()
ctypes.CDLL(sys.argv[1])
print("ftz" if ftz() else "ieee")
"""


PLUGIN_BINARIES = (
    "distill.clap",
    "distill.vst3/Contents/x86_64-linux/distill.so",
    "distill.lv2/distill_dsp.so",
)


@pytest.mark.parametrize("binary", PLUGIN_BINARIES)
def test_loading_the_plugin_leaves_the_hosts_float_mode_alone(plugin: Path, binary: str) -> None:
    """dlopen must not set flush-to-zero / denormals-are-zero in the host's thread (a
    -ffast-math link adds crtfastmath.o, whose constructor does; it once broke Hypothesis in
    the test worker that had loaded the VST3). Checked in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", _FTZ_PROBE, str(plugin / "bin" / binary)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ieee"


def test_every_build_loads_into_one_process(plugin: Path, client_build: Path) -> None:
    """A DAW scanning plug-ins loads the CLAP, VST3 and LV2 builds into one process, and a
    game may hold libdistill beside the plug-in: none may abort the others (full-runtime
    protobuf messages registered distill.proto once per binary in the shared descriptor pool,
    and the second registration aborted the process)."""
    binaries = [plugin / "bin" / b for b in PLUGIN_BINARIES] + [client_build / "c/libdistill.so"]
    probe = "import ctypes, sys\nfor path in sys.argv[1:]:\n    ctypes.CDLL(path)\nprint('loaded')"
    proc = subprocess.run(
        [sys.executable, "-c", probe, *map(str, binaries)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "loaded", proc.stderr[-2000:]


def test_lv2_bundle_passes_lv2info(plugin: Path) -> None:
    if shutil.which("lv2info") is None:
        pytest.skip("lilv-utils not installed; .ci/run installs it")
    proc = subprocess.run(
        ["lv2info", "urn:distill-serve:distill"], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, LV2_PATH=str(plugin / "bin")),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Name:              Distill" in out
    assert "reportsLatency" in out
    assert out.count("lv2core#OutputPort") >= 3  # two audio outputs and the latency port
    symbols = ("play", "seed", "evolution", "stereo_width", "slider0", "slider7", "offline")
    for symbol in (*symbols, "lv2_freewheel"):
        assert f"Symbol:      {symbol}\n" in out
    assert "Designation: http://lv2plug.in/ns/lv2core#freeWheeling" in out  # offline exports


def test_lv2apply_renders_the_python_clients_audio(
    plugin: Path,
    server: ServerThread,
    tmp_path: Path,
    report: Callable[[str], None],
) -> None:
    """lilv's ``lv2apply`` hosts the LV2 build: a file host with neither the options nor the
    urid:map feature nor a transport, one frame per run, faster than real time. With the
    lv2:freeWheeling port on (as an LV2 host sets it when it exports offline; lv2apply sets
    control ports only by hand), the plug-in waits for the server: the output is the reported
    latency as silence, then the Python client's timeline session from 0 for the same
    controls, sample for sample."""
    if shutil.which("lv2apply") is None:
        pytest.skip("lilv-utils not installed; .ci/run installs it")
    rate, seconds = 48000, 3
    lv2_path = tmp_path / "lv2"  # only the LV2 bundle (lilv reads every folder on LV2_PATH)
    lv2_path.mkdir()
    (lv2_path / "distill.lv2").symlink_to(plugin / "bin/distill.lv2")
    silence = tmp_path / "in.wav"
    sf.write(silence, np.zeros((rate * seconds, 1), np.float32), rate, subtype="FLOAT")
    out = tmp_path / "out.wav"
    proc = subprocess.run(
        ["lv2apply", "-i", str(silence), "-o", str(out), "-c", "lv2_freewheel", "1",
         "-c", "seed", "11", "-c", "slider2", "-4", "urn:distill-serve:distill"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "LV2_PATH": str(lv2_path), "DISTILL_SERVER": server.target,
             "DISTILL_TOKEN": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    audio, got_rate = sf.read(out, dtype="float32")
    assert got_rate == rate and audio.shape == (rate * seconds, 2)
    latency = round(LATENCY_S * rate)  # as the latency port says
    assert np.abs(audio[:latency]).max() == 0.0
    assert not np.isnan(audio).any() and np.abs(audio).max() <= 1.0
    sliders = {**dict.fromkeys(range(8), 0), 2: -4}
    ref = python_timeline(server.target, len(audio) - latency, rate, seed=11, sliders=sliders)
    np.testing.assert_array_equal(audio[latency:], ref)
    report(
        f"plug-in (lv2apply, offline) at {rate} Hz: {latency} frames of silence, then the Python"
        f" client's timeline session over {len(ref)} frames, sample for sample"
    )
