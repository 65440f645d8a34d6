"""What one test run builds once and every test process shares: the stand-in bundle, the
native clients (client/, CMake) and the plug-in (client/plugin, DPF). Each is built under a
file lock by whichever process asks first (a test fixture, or tests/prebuild.py, which the
run starts in the background so that the builds overlap the first tests); the others wait
and reuse it. Plain functions, no pytest: the prebuild process imports them too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
NATIVE_PACKAGES = (
    "cmake g++ pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler"
)
DPF = Path("/usr/share/dpf/Makefile.plugins.mk")


class BuildError(RuntimeError):
    """A shared build failed; the message ends with its output."""


def ensure(path: Path, done: str, build: Callable[[Path], None]) -> Path:
    """``build(path)`` unless ``path / done`` exists, under ``path``'s lock."""
    with FileLock(f"{path}.lock"):
        if not (path / done).exists():
            build(path)
    return path


def _run(cmd: list[str], timeout: float = 1800) -> str:
    """Runs ``cmd``; its stdout, or BuildError with the output's tail."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def export_stand_in(out: Path) -> None:
    """``distill-serve export --stand-in --format both`` (writes manifest.json last)."""
    stdout = _run([sys.executable, "-m", "distill_serve", "export", "--stand-in", "--out",
                   str(out), "--format", "both", "--quiet"], timeout=900)  # fmt: skip
    if "wrote bundle" not in stdout:
        raise BuildError(f"the stand-in export did not say it wrote a bundle:\n{stdout[-3000:]}")


def native_toolchain_missing() -> str | None:
    for tool in ("cmake", "g++", "pkg-config", "protoc", "grpc_cpp_plugin"):
        if shutil.which(tool) is None:
            return tool
    if subprocess.run(["pkg-config", "--exists", "grpc++", "protobuf"]).returncode != 0:
        return "grpc++.pc"
    return None


def _niced(cmd: list[str], nice: int) -> list[str]:
    return ["nice", "-n", str(nice), *cmd] if nice and shutil.which("nice") else cmd


def build_client(build: Path, nice: int = 0) -> None:
    """``cmake -S client -B build && cmake --build build``: the C++ examples and libdistill
    (``nice``: at that lower CPU priority, so that a build in the background leaves the
    cores to the stand-in export the first test modules wait for)."""
    _run(_niced(["cmake", "-S", str(ROOT / "client"), "-B", str(build)], nice))
    _run(_niced(["cmake", "--build", str(build), "-j2"], nice))
    (build / "built").touch()


def build_plugin(out: Path, client: Path, nice: int = 0) -> None:
    """``make -C client/plugin OUT=out CLIENT_BUILD=client all test-host``."""
    _run(_niced(["make", "-C", str(ROOT / "client/plugin"), "-j2", f"OUT={out}",
                 f"CLIENT_BUILD={client}", "all", "test-host"], nice))  # fmt: skip
    (out / "built").touch()
