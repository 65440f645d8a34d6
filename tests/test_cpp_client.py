"""The C++ client (client/cpp), built with CMake against Debian's gRPC, run against a live
server: its WAV has the requested length and equals the Python client's audio."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from distill_serve.client import Client
from tests.conftest import ServerThread

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "cmake g++ pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler"
)


def _toolchain_missing() -> str | None:
    for tool in ("cmake", "g++", "pkg-config", "protoc", "grpc_cpp_plugin"):
        if shutil.which(tool) is None:
            return tool
    if subprocess.run(["pkg-config", "--exists", "grpc++", "protobuf"]).returncode != 0:
        return "grpc++.pc"
    return None


@pytest.fixture(scope="module")
def cpp_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = _toolchain_missing()
    if missing is not None:
        pytest.skip(
            f"C++ toolchain not installed ({missing} missing); .ci/run installs it with "
            f"apt-get install {PACKAGES}"
        )
    build = tmp_path_factory.mktemp("cpp")
    for cmd in (
        ["cmake", "-S", str(ROOT / "client/cpp"), "-B", str(build)],
        ["cmake", "--build", str(build), "-j2"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    binary = build / "distill_generate"
    assert binary.is_file()
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
