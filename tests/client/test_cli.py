"""The command line as a user runs it: `distill-serve serve` with no bundle (demo cache),
`info`, `generate` in every mode (stream and unary), errors, and SIGTERM draining."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from distill_serve.client import Client, DistillError
from tests.conftest import CLI, ServeProcess, free_port


@pytest.fixture(scope="module")
def cli_server(demo_server: ServeProcess) -> ServeProcess:
    """`distill-serve serve` with no --bundle and an empty cache: it built the demo bundle
    (tests/conftest.py, shared with the HiFi-GAN tests)."""
    return demo_server


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def test_info_prints_sliders(cli_server: ServeProcess) -> None:
    out = run_cli("info", "--server", cli_server.target)
    assert out.returncode == 0, out.stderr
    assert "latent_dim: 64" in out.stdout and "pc1" in out.stdout
    assert "CPUExecutionProvider" in out.stdout
    # the demo bundle carries the streaming graph, so a CPU server streams it
    assert "vocoder path: stream, live capacity" in out.stdout


@pytest.mark.parametrize("mode", ["crossfade", "latent_interp", "slider"])
@pytest.mark.parametrize("stream", [False, True])
def test_generate_writes_wav(
    cli_server: ServeProcess, tmp_path: Path, mode: str, stream: bool
) -> None:
    wav = tmp_path / f"{mode}.wav"
    args = [
        "generate",
        "--server",
        cli_server.target,
        "--mode",
        mode,
        "--duration",
        "1.3",
        "--seed",
        "7",
        "--rate",
        "24000",
        "--stereo",
        "--width",
        "0.8",
        "-o",
        str(wav),
    ]
    if mode == "slider":  # the app's main mode, with the app's stereo
        args[args.index("--stereo")] = "--haas"
        args += ["--depth", "0.3", "--slider", "0=3", "--slider", "5=-2"]
    if stream:
        args.append("--stream")
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    assert "seed 7" in out.stdout and "first audio" in out.stdout and "total" in out.stdout
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels, info.frames) == (24000, 2, round(1.3 * 24000))


def test_generate_from_latent_file(cli_server: ServeProcess, tmp_path: Path) -> None:
    latent = tmp_path / "z.npy"
    np.save(latent, np.linspace(-1, 1, 64).astype(np.float32))
    wav = tmp_path / "z.wav"
    out = run_cli(
        "generate",
        "--server",
        cli_server.target,
        "--mode",
        "slider",
        "--duration",
        "0.5",
        "--latent",
        str(latent),
        "--evolution",
        "0.3",
        "-o",
        str(wav),
    )
    assert out.returncode == 0, out.stderr
    info = sf.info(str(wav))  # no rate named: 44.1 kHz, as in the Distill app (vocoder: 22.05)
    assert (info.samplerate, info.frames) == (44100, round(0.5 * 44100))


def test_clear_one_line_errors(cli_server: ServeProcess, tmp_path: Path) -> None:
    refused = run_cli(
        "generate",
        "--server",
        cli_server.target,
        "--mode",
        "crossfade",
        "--duration",
        "-2",
        "-o",
        str(tmp_path / "x.wav"),
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0
    assert "INVALID_ARGUMENT" in refused.stderr and "duration_s" in refused.stderr
    down = run_cli(
        "generate",
        "--server",
        f"127.0.0.1:{free_port()}",
        "--mode",
        "crossfade",
        "--duration",
        "1",
        "--timeout",
        "3",
        "-o",
        str(tmp_path / "y.wav"),
    )
    assert down.returncode == 1 and "unavailable" in down.stderr
    assert down.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x.wav").exists()


def test_sigterm_drains_inflight_stream(cli_server: ServeProcess, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    bundle_dir = next(Path(p) for p in _bundle_dirs(cli_server))
    server = ServeProcess(["--bundle", str(bundle_dir), "--grace", "30"], env, startup_s=120)
    got: dict[str, object] = {}

    def stream() -> None:
        try:
            with Client(server.target, timeout=120) as c:
                blocks = c.stream("crossfade", 8.0, seed=1)
                first = next(blocks)
                got["first"] = first
                server.proc.send_signal(signal.SIGTERM)  # while the stream runs
                rest = list(blocks)
                got["samples"] = first.audio.shape[1] + sum(b.audio.shape[1] for b in rest)
        except DistillError as exc:
            got["error"] = exc

    t = threading.Thread(target=stream)
    t.start()
    t.join(timeout=120)
    assert server.proc.wait(timeout=60) == 0
    assert "error" not in got, got.get("error")
    assert got["samples"] == 8 * 44100  # the in-flight stream finished whole (default 44.1 kHz)
    assert any("draining" in line for line in server.lines)
    with pytest.raises(DistillError), Client(server.target, timeout=2) as c:
        c.info()  # the server is gone


def _bundle_dirs(server: ServeProcess) -> list[str]:
    for line in server.lines:
        if "(bundle " in line:
            return [line.split("(bundle ")[1].split(",")[0]]
    raise AssertionError("server did not print its bundle")


def _wait_for(server: ServeProcess, text: str, timeout: float = 60) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if any(text in line for line in server.lines):
            return True
        time.sleep(0.1)
    return False


def test_serve_refuses_tampered_bundle(cli_server: ServeProcess, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "tampered"
    shutil.copytree(Path(_bundle_dirs(cli_server)[0]), bad)
    data = bytearray((bad / "vocoder.onnx").read_bytes())
    data[1000] ^= 0x01
    (bad / "vocoder.onnx").write_bytes(bytes(data))
    out = run_cli("serve", "--bundle", str(bad), "--port", str(free_port()), "--no-cuda")
    assert out.returncode == 1
    assert "vocoder.onnx: sha256 does not match" in out.stderr


def test_token_file_and_sighup_reload(cli_server: ServeProcess, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# one token a line\nalpha-token\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    bundle = _bundle_dirs(cli_server)[0]
    server = ServeProcess(["--bundle", bundle, "--token-file", str(tokens)], env, startup_s=120)
    try:
        denied = run_cli("info", "--server", server.target)
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
        allowed = run_cli("info", "--server", server.target, "--token", "alpha-token")
        assert allowed.returncode == 0, allowed.stderr
        server.proc.send_signal(signal.SIGHUP)
        assert _wait_for(server, "SIGHUP: reloaded"), "".join(server.lines[-20:])
        again = run_cli("info", "--server", server.target, "--token", "alpha-token")
        assert again.returncode == 0 and "latent_dim: 64" in again.stdout
    finally:
        assert server.stop() == 0


def test_demo_clips_sound_like_their_corpus(
    cli_server: ServeProcess, stand_in_bundle: Path, tmp_path: Path, report
) -> None:  # type: ignore[no-untyped-def]
    """`distill-serve demo` (trained decoder + HiFi-GAN universal, from the cache the server
    built) writes clips whose loudness and spectrum move like sound, where the random stand-in
    gives stationary noise with fixed lines."""
    from benchmarks.quality import texture
    from distill_serve.server.engine.engine import Engine, EngineConfig
    from tests.conftest import generate, params

    out = subprocess.run(
        [*CLI, "demo", "--out", str(tmp_path), "--duration", "6"],
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_server.env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    stand_in = Engine.from_dir(stand_in_bundle, EngineConfig(use_cuda=False))
    baseline = texture(generate(stand_in, params(stand_in, duration_s=6.0))[0], 44100)
    report(f"texture stand-in (random weights) crossfade: {baseline}")
    assert baseline.loudness_std_db < 1.0
    for mode in ("crossfade", "latent_interp", "slider"):
        audio, rate = sf.read(tmp_path / f"{mode}.wav")
        t = texture(audio.mean(axis=1), rate)
        report(f"texture demo {mode}: {t}")
        assert t.loudness_std_db > 2.0 and t.centroid_std_hz > 150.0, mode
