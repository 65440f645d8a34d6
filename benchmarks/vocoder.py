"""Vocoder speed: torch eager (the bigvgan package), onnxruntime CPU and TorchScript on the
same weights and the same input, in one run.

Each backend is timed in its own child process (``python -m benchmarks.vocoder``): on two
cores, thread pools left over by one framework visibly slow the next one down.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from distill_serve.export.demo import demo_vocoder_config
from distill_serve.export.graphs import export_onnx, export_torchscript
from distill_serve.export.vocoder import FULL_44K_CONFIG, random_vocoder

#: Estimated cost of the full 44 kHz model per second of audio (DESIGN section 5).
FULL_GFLOP_PER_AUDIO_SECOND = 315.0
HOP, RATE = 512, 44100


def prepare(name: str, cache: Path) -> tuple[Path, Path]:
    """Random-init weights (seed 0) for ``name``, exported once to ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    onnx_path, ts_path = cache / f"{name}.onnx", cache / f"{name}.pt"
    if not onnx_path.exists() or not ts_path.exists():
        model = eager_model(name)
        example = [torch.randn(1, 128, 40)]
        export_onnx(
            model,
            example,
            ["mel"],
            ["audio"],
            [{2: torch.export.Dim("frames", min=1, max=1 << 20)}],
            onnx_path,
        )
        export_torchscript(model, example, ts_path)
    return onnx_path, ts_path


def eager_model(name: str) -> torch.nn.Module:
    model = random_vocoder(CONFIGS[name], 0)
    model.remove_weight_norm()  # type: ignore[operator]
    return model.eval()


def runner(name: str, backend: str, cache: Path, threads: int) -> Callable[[np.ndarray], object]:
    """A function that vocodes ``(1, 128, T)`` mels with one backend."""
    onnx_path, ts_path = cache / f"{name}.onnx", cache / f"{name}.pt"
    if backend == "ort_cpu":
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"mel": x})
    model = torch.jit.load(str(ts_path)) if backend == "torchscript" else eager_model(name)

    def run(x: np.ndarray) -> object:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def _time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


WARMUP_CALLS = 3  # TorchScript's profiling executor optimises over its first calls
BACKENDS = ("torch_eager", "ort_cpu", "torchscript")


def measure(
    name: str, backend: str, seconds: list[float], repeats: int, cache: Path, threads: int
) -> dict[str, float]:
    """Seconds of compute per second of audio, per length (this process, one backend)."""
    run = runner(name, backend, cache, threads)
    for _ in range(WARMUP_CALLS):
        run(np.full((1, 128, 86), -4.0, np.float32))
    out = {}
    for s in seconds:
        frames = max(1, round(s * RATE / HOP))
        x = (np.random.default_rng(1).standard_normal((1, 128, frames)) * 2 - 4).astype(np.float32)
        n = 1 if name == "full_44k" and s > 5 else repeats  # one run is already a minute
        out[str(s)] = _time(lambda x=x: run(x), n) / (frames * HOP / RATE)
    return out


def bench(
    name: str, seconds: list[float], repeats: int, cache: Path, threads: int
) -> list[dict[str, Any]]:
    """Prepare the graphs, then time each backend in a child process; one row per length."""
    _child(["prepare", name, "--cache", str(cache)])
    rtf = {
        b: json.loads(
            _child(
                [
                    "measure",
                    name,
                    b,
                    "--seconds",
                    ",".join(map(str, seconds)),
                    "--repeats",
                    str(repeats),
                    "--cache",
                    str(cache),
                    "--threads",
                    str(threads),
                ]
            )
        )
        for b in BACKENDS
    }
    params = {"demo": 0.96, "full_44k": 122.15}[name]
    rows = []
    for s in seconds:
        k = str(s)
        row: dict[str, Any] = {
            "model": name,
            "params_m": params,
            "audio_s": s,
            "rtf_torch_eager": rtf["torch_eager"][k],
            "rtf_ort_cpu": rtf["ort_cpu"][k],
            "rtf_torchscript": rtf["torchscript"][k],
            "speedup_ort_vs_eager": rtf["torch_eager"][k] / rtf["ort_cpu"][k],
            "speedup_ts_vs_eager": rtf["torch_eager"][k] / rtf["torchscript"][k],
        }
        if name == "full_44k":
            row["ort_gflops"] = FULL_GFLOP_PER_AUDIO_SECOND / row["rtf_ort_cpu"]
        rows.append(row)
    return rows


def _child(args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.vocoder", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.vocoder {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


CONFIGS = {"demo": demo_vocoder_config(), "full_44k": dict(FULL_44K_CONFIG)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vocoder")
    p.add_argument("action", choices=["prepare", "measure"])
    p.add_argument("model", choices=sorted(CONFIGS))
    p.add_argument("backend", nargs="?", choices=BACKENDS)
    p.add_argument("--seconds", default="1.0")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.action == "prepare":
        prepare(args.model, args.cache)
        return 0
    seconds = [float(x) for x in args.seconds.split(",")]
    result = measure(args.model, args.backend, seconds, args.repeats, args.cache, args.threads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
