"""libdistill (client/c): the C API a game engine or plug-in plays a live session through,
against a live server. From a C test host (random buffer sizes, paced in real time, also under
AddressSanitizer) and from Python through ctypes: the audio is the Python client's until the
first control, a control is heard within the reported latency, distill_render neither
allocates nor locks, a server that goes away and comes back is survived, a refusal is a status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from distill_serve.client import Client
from distill_serve.export.app_files import (
    SMALL_V2,
    app_model_dict,
    app_vocoder_state,
    write_app_model,
)
from distill_serve.export.exporter import ExportConfig, export_bundle
from distill_serve.server.api.server import ServerConfig
from distill_serve.server.engine.engine import Engine, EngineConfig
from tests.conftest import ROOT, ServerThread, free_port, start_server

sys.path.insert(0, str(ROOT / "client" / "c" / "python"))
import distill_c

RATE = 48000


@pytest.fixture(scope="module")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A Distill user's model: an app-shaped ``.distillgan`` with its own per-model HiFi-GAN
    V2 (48 kHz, the decoder's mel as it is), exported and served."""
    work = tmp_path_factory.mktemp("c-app")
    model = write_app_model(
        work / "rain.distillgan",
        app_model_dict(vocoder_state=app_vocoder_state(SMALL_V2, epochs=50)),
    )
    out = work / "rain"
    export_bundle(
        ExportConfig(checkpoint=model, vocoder="auto", out=out, rates=(48000,), progress=False)
    )
    s = start_server(Engine.from_dir(out, EngineConfig(use_cuda=False, live_capacity=0)))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def library(client_build: Path) -> distill_c.Library:
    return distill_c.Library(client_build / "c" / "libdistill.so")


def _run_host(binary: Path, server: str, out: Path, *args: str) -> dict[str, str]:
    proc = subprocess.run(
        [str(binary), "--server", server, "-o", str(out), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(
        line.split(" ", 1) if " " in line else (line, "") for line in proc.stdout.splitlines()
    )


def _python_live(target: str, frames: int, channels: int, **spec: object) -> np.ndarray:
    """The first ``frames`` of the Python client's live session (float32, frames x channels)."""
    return _python_live_blocks(target, frames, channels, **spec)[0]


def _python_live_blocks(
    target: str, frames: int, channels: int, **spec: object
) -> tuple[np.ndarray, int]:
    """:func:`_python_live` and the longest block the server sent."""
    with Client(target, timeout=120) as c:
        session = c.live(
            "slider", encoding="float32", spatial="stereo" if channels == 2 else "mono", **spec
        )
        blocks, got = [], 0
        for block in session:
            blocks.append(block.audio)
            got += block.audio.shape[1]
            if got >= frames:
                session.stop()
    return np.concatenate(blocks, axis=1).T[:frames], max(b.shape[1] for b in blocks)


def _snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    err = float(np.sum((ref.astype(np.float64) - x) ** 2))
    return (
        float("inf")
        if err == 0
        else 10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / err)
    )


@pytest.mark.realtime
@pytest.mark.parametrize("served", ["server", "app_server"])
def test_c_host_plays_the_python_clients_audio(
    client_build: Path, served: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The C test host renders 8 s at 48 kHz stereo in random buffers of 1..4096 frames,
    paced in real time, with a slider change at 4 s and stop at 8 s; from the stand-in and
    from a Distill user's bundle with its per-model vocoder."""
    server: ServerThread = request.getfixturevalue(served)
    out = tmp_path / "host.f32"
    r = _run_host(
        client_build / "c" / "render_host", server.target, out,
        "--rate", str(RATE), "--channels", "2", "--seconds", "8", "--seed", "21",
        "--slider-at", "4", "--max-frames", "4096",
    )  # fmt: skip
    audio = np.fromfile(out, np.float32).reshape(-1, 2)
    assert r["state"] == "stopped" and r["last_error"] == ""
    assert int(r["nans"]) == 0 and float(r["peak"]) <= 1.0
    # The counters see the library's allocations (in distill_open) and locks (in
    # distill_get_status) when asked to; inside distill_render there were none.
    assert int(r["alloc_check"]) > 0 and int(r["lock_check"]) > 0
    assert r["allocations_in_render"] == "0" and r["locks_in_render"] == "0"
    latency = int(r["latency_frames"])
    assert latency == round((0.3 + 0.05) * RATE)
    # Until the slider moved (and until the first underrun, if the machine was too busy to keep
    # up), the host played the Python client's live session sample for sample.
    start = int(r["frames_before_audio"])
    end = int(r["slider_frame"])
    if int(r["underruns"]) > 0:
        end = min(end, int(r["first_underrun_frame"]) - 2 * 4096)
    assert end - start > RATE // 2, r
    ref, block = _python_live_blocks(
        server.target, end - start, 2, seed=21, sliders={0: 4}, sample_rate=RATE
    )
    assert _snr_db(ref, audio[start:end]) >= 100
    np.testing.assert_array_equal(audio[start:end], ref)
    # When the slider was heard: the ring holds at most the lookahead, one block and what the
    # server made before playback began (at most `start` frames); one more block may be on its
    # way, and the host polls its status once per buffer (up to 4096 frames).
    heard = int(r["heard_frame"]) - end
    if int(r["underruns"]) == 0:  # an underrun (a machine too busy) delays what is heard
        assert 0 < heard <= latency + 2 * block + start + 4096 + RATE // 50, (r, block)
    # stop: the server's fade-out, then silence.
    tail = audio[int(r["stop_frame"]) :]
    assert np.abs(tail[-RATE // 10 :]).max() == 0.0  # the host renders 0.2 s after the end
    assert int(r["frames_played"]) < int(r["frames_rendered"])


@pytest.mark.realtime
def test_c_host_under_address_sanitizer(
    client_build: Path, server: ServerThread, tmp_path: Path
) -> None:
    """The same host and library built with -fsanitize=address, rendering interleaved
    stereo: a session with a control and stop, then close, with no error and no leak
    reported, and the Python client's audio until the control."""
    out = tmp_path / "asan.f32"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1")
    proc = subprocess.run(
        [str(client_build / "c" / "render_host_asan"), "--server", server.target, "-o", str(out),
         "--rate", "32000", "--channels", "2", "--interleaved", "1", "--seconds", "2",
         "--seed", "5", "--slider-at", "1", "--max-frames", "1024"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "ERROR: AddressSanitizer" not in proc.stderr
    assert "ERROR: LeakSanitizer" not in proc.stderr
    r = dict(line.split(" ", 1) if " " in line else (line, "") for line in proc.stdout.splitlines())
    assert r["state"] == "stopped", r
    audio = np.fromfile(out, np.float32).reshape(-1, 2)
    start, end = int(r["frames_before_audio"]), int(r["slider_frame"])
    if int(r["underruns"]) > 0:
        end = min(end, int(r["first_underrun_frame"]) - 2 * 1024)
    assert end > start, r
    ref = _python_live(server.target, end - start, 2, seed=5, sliders={0: 4}, sample_rate=32000)
    np.testing.assert_array_equal(audio[start:end], ref)


def test_model_info_through_ctypes(library: distill_c.Library, server: ServerThread) -> None:
    info = library.model_info(library.config(server=server.target))
    with Client(server.target, timeout=30) as c:
        ref = c.info()
    assert info.latent_dim == ref.latent_dim
    assert [(s.label, s.min_position, s.max_position) for s in info.sliders] == [
        (s.label, s.min_position, s.max_position) for s in ref.sliders
    ]
    assert info.sample_rates == ref.sample_rates
    with pytest.raises(RuntimeError, match=r"127\.0\.0\.1:1"):
        library.model_info(library.config(server="127.0.0.1:1"), timeout_s=2)


def test_open_refuses_a_bad_config(library: distill_c.Library) -> None:
    for fields, message in [
        ({"channels": 3}, "channels must be 1 or 2"),
        ({"max_frames": 0}, "max_frames"),
        ({"mode": 9}, "mode must be"),
        ({"tls_root_certs": "/nonexistent.pem"}, "cannot read TLS root certificates"),
    ]:
        with pytest.raises(ValueError, match=message):
            distill_c.Session(library, library.config(server="127.0.0.1:1", **fields))


def _play(session: distill_c.Session, seconds: float, block: int = 480) -> np.ndarray:
    """Render ``seconds`` of audio in real time, ``block`` frames a call."""
    chunks, t0 = [], time.monotonic()
    for i in range(round(seconds * RATE / block)):
        chunks.append(session.render(block)[0])
        time.sleep(max(0.0, t0 + (i + 1) * block / RATE - time.monotonic()))
    return np.concatenate(chunks, axis=1)


def _wait_for(session: distill_c.Session, state: str, limit_s: float) -> np.ndarray:
    chunks, t0 = [], time.monotonic()
    while session.status().state_name != state and time.monotonic() - t0 < limit_s:
        chunks.append(_play(session, 0.1))
    return np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.float32)


@pytest.fixture
def restartable(engine: Engine) -> Iterator[list[ServerThread]]:
    servers: list[ServerThread] = []
    yield servers
    for s in servers:
        s.stop()


def test_session_survives_a_server_that_goes_away(
    library: distill_c.Library, engine: Engine, restartable: list[ServerThread]
) -> None:
    """Server stopped mid-session: the audio fades to silence (no click), the status says
    connecting with the underrun and the transport's error; a new server on the same port:
    the session reconnects by itself and plays again."""
    port = free_port()
    restartable.append(ServerThread(ServerConfig(port=port), engine))
    config = library.config(server=f"127.0.0.1:{port}", mode=distill_c.MODE_SLIDER, sliders=[4],
                            sample_rate=RATE, channels=1, max_frames=480)  # fmt: skip
    with distill_c.Session(library, config) as session:
        _wait_for(session, "playing", 60)
        before = _play(session, 1.0)
        assert np.abs(before).max() > 0
        # a machine busy with other work may underrun a block (buffering); it plays on
        _wait_for(session, "playing", 30)
        assert session.status().state_name == "playing"
        restartable.pop().stop()
        gone = _wait_for(session, "connecting", 30)
        gone = np.concatenate([gone, _play(session, 1.0)], axis=1)[0]
        status = session.status()
        assert status.state_name == "connecting", status.state_name
        assert status.underruns >= 1 and status.last_error.decode()
        # The last sound before the silence faded out: no step to zero.
        silent = np.flatnonzero(gone != 0)
        assert silent.size == 0 or abs(gone[silent[-1]]) < 0.02
        assert np.abs(gone[-RATE // 2 :]).max() == 0.0
        restartable.append(ServerThread(ServerConfig(port=port), engine))
        _wait_for(session, "playing", 60)
        again = _play(session, 1.0)
        _wait_for(session, "playing", 30)
        status = session.status()
        assert status.state_name == "playing" and status.connects >= 2
        assert np.abs(again).max() > 0


def test_stop_play_and_a_new_seed(library: distill_c.Library, server: ServerThread) -> None:
    """A new seed fades the session out and plays the new trajectory; stop fades out to
    silence; controls set while stopped apply when play starts a new session (fading in)."""
    config = library.config(server=server.target, mode=distill_c.MODE_SLIDER, sliders=[4],
                            seed=3, sample_rate=RATE, channels=1, max_frames=480)  # fmt: skip
    with distill_c.Session(library, config) as session:
        _wait_for(session, "playing", 60)
        _play(session, 0.5)
        assert session.status().seed == 3
        assert session.set_seed(4) == distill_c.OK
        t0 = time.monotonic()
        while session.status().seed != 4 and time.monotonic() - t0 < 30:
            _play(session, 0.1)
        _wait_for(session, "playing", 60)  # the new seed's session, once its ring has filled
        status = session.status()
        assert status.seed == 4 and status.connects == 2 and status.state_name == "playing"
        assert session.stop() == distill_c.OK
        _wait_for(session, "stopped", 30)
        silence = _play(session, 0.3)
        assert session.status().state_name == "stopped" and np.abs(silence).max() == 0.0
        assert session.set_slider(0, -4) == distill_c.OK  # for the next session
        assert session.play() == distill_c.OK
        resumed = _wait_for(session, "playing", 60)
        resumed = np.concatenate([resumed, _play(session, 0.5)], axis=1)[0]
        status = session.status()
        assert status.state_name == "playing" and status.connects == 3 and status.seed == 4
        sound = np.flatnonzero(resumed != 0)
        assert sound.size > 0
        # The new session fades in from zero over its first 64 frames, then it is the Python
        # client's session with the slider set while stopped.
        start = sound[0] - 1
        assert np.abs(resumed[start : start + 8]).max() < np.abs(resumed).max() / 4
        n = resumed.size - start
        ref = _python_live(server.target, n, 1, seed=4, sliders={0: -4}, sample_rate=RATE)
        np.testing.assert_array_equal(resumed[start + 64 :], ref[64:, 0])


def test_a_bad_token_is_a_status_not_a_crash(library: distill_c.Library, engine: Engine) -> None:
    server = ServerThread(ServerConfig(port=0, auth_tokens=("right-token",)), engine)
    try:
        config = library.config(server=server.target, token="wrong-token", sample_rate=RATE)
        with distill_c.Session(library, config) as session:
            audio = _wait_for(session, "failed", 30)
            status = session.status()
            assert status.state_name == "failed"
            assert status.last_error.decode().startswith("UNAUTHENTICATED")
            assert status.connects == 1 and np.abs(audio).max() == 0.0
            assert session.render(480)[1] == 0  # silence, still callable
        with pytest.raises(RuntimeError, match="token"):
            library.model_info(library.config(server=server.target, token="wrong-token"))
    finally:
        server.stop()


def test_the_model_is_chosen_by_name(library: distill_c.Library, server: ServerThread) -> None:
    """distill_config.model picks a server's model: the right name plays, an unknown one
    fails the session with NOT_FOUND (no retries) and model info names the models."""
    name = server.server.models.default_name
    info = library.model_info(library.config(server=server.target, model=name))
    assert info.latent_dim == 64
    with pytest.raises(RuntimeError, match=f"no model named 'nope'.*{name}"):
        library.model_info(library.config(server=server.target, model="nope"))
    config = library.config(server=server.target, model="nope", sample_rate=RATE)
    with distill_c.Session(library, config) as session:
        _wait_for(session, "failed", 30)
        status = session.status()
        assert status.state_name == "failed" and status.connects == 1
        assert status.last_error.decode().startswith("NOT_FOUND")
    config = library.config(server=server.target, model=name, sample_rate=RATE)
    with distill_c.Session(library, config) as session:
        _wait_for(session, "playing", 30)
        assert np.abs(_play(session, 0.3)).max() > 0


def test_wait_renders_offline_without_underruns(
    library: distill_c.Library, server: ServerThread
) -> None:
    """distill_wait (offline rendering): a host that renders as fast as it can, waiting before
    each call, gets the Python client's live session from its first frame, no silence and no
    underrun; after stop, the wait returns once the fade-out has come."""
    config = library.config(
        server=server.target, sample_rate=RATE, channels=2, seed=5, max_frames=4096,
        mode=3, sliders=[0, 3],
    )  # fmt: skip
    rng = np.random.default_rng(0)
    with distill_c.Session(library, config) as session:
        chunks, total = [], RATE * 2
        while sum(c.shape[1] for c in chunks) < total:
            frames = int(rng.integers(1, 4097))
            session.wait(frames, 30.0)
            audio, played = session.render(frames)
            assert played == frames
            chunks.append(audio)
        status = session.status()
        assert status.underruns == 0 and status.frames_before_audio == 0
        session.stop()
        t0 = time.monotonic()
        session.wait(4096, 30.0)  # returns when the session ends, not after 30 s
        assert time.monotonic() - t0 < 20
    audio = np.concatenate(chunks, axis=1)[:, :total]
    ref = _python_live(server.target, total, 2, seed=5, sliders={0: 0, 1: 3}, sample_rate=RATE)
    np.testing.assert_array_equal(audio.T, ref)


def test_controls_from_many_threads(library: distill_c.Library, server: ServerThread) -> None:
    """Four threads set controls as fast as they can while the audio thread renders: every
    call returns OK or QUEUE_FULL, the session keeps playing and hears the controls."""
    config = library.config(server=server.target, mode=distill_c.MODE_SLIDER, sliders=[2],
                            sample_rate=RATE, channels=2, max_frames=480)  # fmt: skip
    results: list[int] = []
    latent_dim = library.model_info(config).latent_dim
    with distill_c.Session(library, config) as session:
        _wait_for(session, "playing", 60)

        def spam(k: int) -> None:
            for i in range(300):
                if k == 0:
                    results.append(session.set_slider(i % 3, i % 5 - 2))
                elif k == 1:
                    results.append(session.set_evolution(0.1 * (i % 3)))
                elif k == 2:
                    results.append(session.set_stereo_width(0.5 + 0.5 * (i % 2)))
                else:
                    results.append(session.set_latent([0.01 * i] * latent_dim))

        threads = [threading.Thread(target=spam, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        _play(session, 1.0)
        for t in threads:
            t.join()
        _play(session, 1.0)
        status = session.status()
        assert status.state_name == "playing", status.last_error
        assert set(results) <= {distill_c.OK, distill_c.ERROR_QUEUE_FULL}
        assert status.control_sent > 0 and status.control_heard > 0
        assert session.set_evolution(2.0) == distill_c.ERROR_ARGUMENT
