"""The C++ clients (client/cpp), built with CMake against Debian's gRPC, run against a live
server: their WAVs have the requested length and equal the Python client's audio."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from distill_serve.client import Client
from tests.conftest import ServerThread


@pytest.fixture(scope="module")
def cpp_client(client_build: Path) -> Path:
    binary = client_build / "cpp" / "distill_generate"
    assert binary.is_file() and (binary.parent / "distill_live").is_file()
    return binary


@pytest.mark.parametrize(
    ("mode", "extra", "py_options"),
    [
        ("crossfade", ["--stereo"], {"spatial": "stereo"}),
        ("slider", ["--slider", "0=4", "--slider", "3=-2"], {"sliders": {0: 4, 3: -2}}),
    ],
)
def test_cpp_client_matches_python_client(
    cpp_client: Path,
    server: ServerThread,
    tmp_path: Path,
    mode: str,
    extra: list[str],
    py_options: dict,  # type: ignore[type-arg]
) -> None:
    wav = tmp_path / "cpp.wav"
    proc = subprocess.run(
        [
            str(cpp_client),
            "--server",
            server.target,
            "--mode",
            mode,
            "--duration",
            "1.7",
            "--seed",
            "21",
            "--rate",
            "32000",
            *extra,
            "-o",
            str(wav),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "first audio" in proc.stdout
    audio, rate = sf.read(str(wav), dtype="int16", always_2d=True)
    channels = 2 if "--stereo" in extra else 1
    assert rate == 32000 and audio.shape == (round(1.7 * 32000), channels)
    with Client(server.target, timeout=60) as c:
        ref = c.generate(mode, 1.7, seed=21, sample_rate=32000, **py_options)
    ref_int = np.round(ref.audio.T * 32767).astype(np.int16)
    np.testing.assert_array_equal(audio, ref_int)


@pytest.mark.parametrize("rate", [48000, 24000])
def test_cpp_client_decodes_an_opus_stream_with_libopus(
    cpp_client: Path, server: ServerThread, tmp_path: Path, rate: int
) -> None:
    """distill_generate --encoding opus decodes the streamed packets with Debian's libopus
    (opus_decode_float, pre-skip dropped) to the audio other decoders make of the same
    request's Ogg Opus file: libsndfile (libopus at the same rate) and the Python client."""
    wav = tmp_path / "opus.wav"
    proc = subprocess.run(
        [str(cpp_client), "--server", server.target, "--mode", "crossfade", "--duration", "1.3",
         "--seed", "4", "--rate", str(rate), "--stereo", "--encoding", "opus",
         "--bitrate", "96000", "-o", str(wav)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    audio, wav_rate = sf.read(str(wav), dtype="float32", always_2d=True)
    assert wav_rate == rate and audio.shape == (round(1.3 * rate), 2)
    with Client(server.target, timeout=60) as c:
        unary = c.generate(
            "crossfade", 1.3, seed=4, sample_rate=rate, spatial="stereo", encoding="opus",
            bitrate_bps=96000,
        )  # fmt: skip
    import io

    by_libsndfile, _ = sf.read(io.BytesIO(unary.file), dtype="float32", always_2d=True)
    power = float(np.sum(audio**2))
    assert power > 0
    snr = 10 * np.log10(power / np.sum((audio - by_libsndfile) ** 2))
    assert snr > 60.0  # both are libopus at the stream's rate: float rounding apart
    if rate == 48000:  # the Python client's FFmpeg decodes at 48 kHz only
        snr_py = 10 * np.log10(power / np.sum((audio - unary.audio.T) ** 2))
        assert snr_py > 60.0


def test_cpp_client_reports_refusal(cpp_client: Path, server: ServerThread, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            str(cpp_client),
            "--server",
            server.target,
            "--mode",
            "crossfade",
            "--duration",
            "-1",
            "-o",
            str(tmp_path / "x.wav"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "duration_s" in proc.stderr and not (tmp_path / "x.wav").exists()


def test_cpp_live_example_steers_a_session(
    cpp_client: Path, server: ServerThread, tmp_path: Path
) -> None:
    """client/cpp/distill_live: audio thread reads blocks while the UI thread sends controls
    read from stdin. Until its first control the audio is the Python client's, sample for
    sample; it ends with the server's fade-out."""
    wav = tmp_path / "live.wav"
    proc = subprocess.run(
        [str(cpp_client.parent / "distill_live"), "--server", server.target, "--mode", "slider",
         "--slider", "0=4", "--seed", "21", "--rate", "32000", "-o", str(wav)],
        input="wait 0.6\nslider 1=-6\nwait 0.4\nstop\n", capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "ended by stop" in proc.stdout
    unsteered = int(proc.stdout.split(" frames before the first control")[0].rsplit(" ", 1)[1])
    audio, rate = sf.read(str(wav), dtype="int16", always_2d=True)
    # How much audio comes before the control depends on the server's speed (pacing bounds it
    # from above only): under a full CPU load it was less than the 0.6 s waited.
    assert rate == 32000 and unsteered > 0 and audio.shape[0] > unsteered
    with Client(server.target, timeout=60) as c:
        session = c.live("slider", seed=21, sample_rate=32000, sliders={0: 4})
        blocks = []
        for block in session:
            blocks.append(block.audio)
            if sum(b.shape[1] for b in blocks) >= unsteered:
                session.stop()
    ref = np.round(np.concatenate(blocks, axis=1).T[:unsteered] * 32767).astype(np.int16)
    np.testing.assert_array_equal(audio[:unsteered], ref)
    assert np.abs(audio[-10:]).max() < 100  # faded out
