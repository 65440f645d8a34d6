"""Vocoder speed: torch eager (the bigvgan package), onnxruntime CPU and TorchScript on the
same weights and the same input, in one run.

``ort_cpu`` and ``torchscript`` run the graphs as ``distill-serve export`` writes them (the
anti-aliased activations rewritten as polyphase convolutions, ``export/antialias.py``);
``ort_cpu_plain`` runs the straight dynamo export of the ``bigvgan`` module, to show what the
rewrite is worth. ``ort_cpu_int8`` runs the int8 graph of ``distill-serve export --int8``
(``export/quantize.py``, calibrated here on random and silent mels); its SNR is against the
fp32 ORT graph's output on the same input.

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
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from distill_serve.export.parity import snr_db

if TYPE_CHECKING:
    import torch

# torch and the exporter load only where a backend or step needs them: a child timing an
# onnxruntime backend starts in a second, and no torch thread pool sits beside what it times.

#: Estimated cost of the full 44 kHz model per second of audio (DESIGN section 5).
FULL_GFLOP_PER_AUDIO_SECOND = 315.0
HOP, RATE = 512, 44100


def paths(name: str, cache: Path) -> dict[str, Path]:
    """The cached graphs of ``name``: as exported (polyphase) and the plain ONNX export."""
    return {
        "onnx": cache / f"{name}-polyphase.onnx",
        "torchscript": cache / f"{name}-polyphase.pt",
        "onnx_plain": cache / f"{name}-plain.onnx",
        "onnx_int8": cache / f"{name}-int8.onnx",
        "onnx_fp16": cache / f"{name}-fp16.onnx",
    }


def seed_from_bundle(name: str, cache: Path, bundle: Path) -> bool:
    """Fill ``cache`` with ``bundle``'s vocoder graphs (exported polyphase ONNX, TorchScript,
    int8, fp16) when that vocoder is ``name``'s architecture, so that :func:`prepare` exports
    nothing. Their weights are the bundle's: the timings do not depend on them, and the int8
    and fp16 SNRs compare graphs of the same weights. Returns whether it did."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    vocoder = manifest.get("vocoder", {})
    if vocoder.get("family") != "bigvgan" or vocoder.get("config") != configs()[name]:
        return False
    files = {(f["role"], Path(f["path"]).suffix): bundle / f["path"] for f in manifest["files"]}
    sources = {
        "onnx": files.get(("vocoder", ".onnx")),
        "torchscript": files.get(("vocoder", ".pt")),
        "onnx_int8": files.get(("vocoder_int8", ".onnx")),
        "onnx_fp16": files.get(("vocoder_fp16", ".onnx")),
    }
    if any(p is None or not p.is_file() for p in sources.values()):
        return False
    cache.mkdir(parents=True, exist_ok=True)
    for key, source in sources.items():
        target = paths(name, cache)[key]
        if not target.exists() and source is not None:
            target.symlink_to(source.resolve())
    return True


def prepare(name: str, cache: Path, plain: bool = True) -> dict[str, Path]:
    """Random-init weights (seed 0) for ``name``, exported once to ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    out = paths(name, cache)
    if not plain:
        del out["onnx_plain"]
    if all(p.exists() for p in out.values()):
        return out
    import torch

    from distill_serve.export.antialias import polyphase_activations
    from distill_serve.export.graphs import export_onnx, export_torchscript
    from distill_serve.export.half import half_convolutions
    from distill_serve.export.quantize import quantize_vocoder

    if out["onnx"].exists() and not out["onnx_fp16"].exists():  # a cache from before fp16
        half_convolutions(out["onnx"], out["onnx_fp16"])
    model = eager_model(name)
    rewritten, _ = polyphase_activations(model)
    example = [torch.randn(1, 128, 40)]
    dynamic = [{2: torch.export.Dim("frames", min=1, max=1 << 20)}]
    for module, key in ((rewritten, "onnx"), (model, "onnx_plain")):
        path = out.get(key)
        if path is not None and not path.exists():
            export_onnx(module, example, ["mel"], ["audio"], dynamic, path)
    if not out["torchscript"].exists():
        export_torchscript(rewritten, example, out["torchscript"])
    if not out["onnx_int8"].exists():
        quantize_vocoder(out["onnx"], out["onnx_int8"], calibration_mels())
    if not out["onnx_fp16"].exists():
        half_convolutions(out["onnx"], out["onnx_fp16"])
    return out


def test_mel(frames: int) -> np.ndarray:
    """The measured input: log-mel noise around -4 (the range BigVGAN sees)."""
    return (np.random.default_rng(1).standard_normal((1, 128, frames)) * 2 - 4).astype(np.float32)


def calibration_mels() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    mels = [(rng.standard_normal((1, 128, 16)) * 2 - 4).astype(np.float32) for _ in range(4)]
    return [*mels, np.full((1, 128, 8), np.log(1e-5), np.float32)]


def eager_model(name: str) -> torch.nn.Module:
    from distill_serve.export.vocoder import random_vocoder

    model = random_vocoder(configs()[name], 0)
    model.remove_weight_norm()  # type: ignore[operator]
    return model.eval()


def _cuda_session(graph: Path, algo: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ort.preload_dlls()
    cuda = (
        "CUDAExecutionProvider",
        {"cudnn_conv_algo_search": algo, "cudnn_conv1d_pad_to_nc1d": "1"},
    )
    session = ort.InferenceSession(str(graph), opts, providers=[cuda, "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"onnxruntime runs {graph.name} on {session.get_providers()[0]}")
    return session


def runner(name: str, backend: str, cache: Path, threads: int) -> Callable[[np.ndarray], object]:
    """A function that vocodes ``(1, 128, T)`` mels with one backend."""
    graphs = paths(name, cache)
    if backend.startswith("ort_cuda"):
        graph = {"ort_cuda_plain": "onnx_plain", "ort_cuda_fp16": "onnx_fp16"}.get(backend, "onnx")
        algo = "EXHAUSTIVE" if backend == "ort_cuda_exhaustive" else "HEURISTIC"
        session = _cuda_session(graphs[graph], algo)
        return lambda x: session.run(None, {"mel": x})
    if backend.startswith("ort_cpu"):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # as the server runs it (EngineConfig.allow_spinning defaults to False)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            opts.intra_op_num_threads = threads
        graph = graphs[{"ort_cpu": "onnx", "ort_cpu_plain": "onnx_plain"}.get(backend, "onnx_int8")]
        session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"mel": x})
    import torch

    if backend == "torch_cuda":
        model = eager_model(name).cuda()

        def run_cuda(x: np.ndarray) -> object:
            with torch.inference_mode():
                out = model(torch.from_numpy(x).cuda())
                torch.cuda.synchronize()
                return out.float().cpu()

        return run_cuda
    model = (
        torch.jit.load(str(graphs["torchscript"]))
        if backend == "torchscript"
        else eager_model(name)
    )
    bf16 = backend == "torch_bf16"

    def run(x: np.ndarray) -> object:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return model(torch.from_numpy(x)).float()

    return run


def alternating_shapes(name: str, backend: str, cache: Path) -> dict[str, float]:
    """The cost of changing input shapes (the issue's 60-second check): one session, one
    thread; T = 36 and 72 alternating ten times, then T = 72 ten times. Median seconds per
    run of each phase."""
    run = runner(name, backend, cache, 0)
    a, b = test_mel(36), test_mel(72)
    run(a)
    run(b)
    alternating = []
    for _ in range(10):
        for x in (a, b):
            start = time.perf_counter()
            run(x)
            alternating.append(time.perf_counter() - start)
    fixed = []
    for _ in range(10):
        start = time.perf_counter()
        run(b)
        fixed.append(time.perf_counter() - start)
    return {
        "alternating_s": float(np.median(alternating)),
        "fixed_s": float(np.median(fixed)),
    }


#: reduced-precision backends and the fp32 backend their SNR is measured against
SNR_REFERENCE = {
    "ort_cpu_int8": "ort_cpu",
    "torch_bf16": "torch_eager",
    "ort_cuda_fp16": "ort_cuda",
    "ort_cuda": "torch_cuda",
}


def reduced_precision_snr(
    name: str, cache: Path, backend: str = "ort_cpu_int8", frames: int = 86
) -> float:
    """SNR (dB) of a reduced-precision backend against its fp32 counterpart, same input."""
    x = test_mel(frames)
    ref = runner(name, SNR_REFERENCE[backend], cache, 0)(x)
    out = runner(name, backend, cache, 0)(x)
    return snr_db(_audio(ref), _audio(out))


def _audio(result: object) -> np.ndarray:
    first = result[0] if isinstance(result, list) else result
    return np.asarray(first, dtype=np.float32).reshape(-1)


def _time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


WARMUP_CALLS = 3  # TorchScript's profiling executor optimises over its first calls
BACKENDS = ("torch_eager", "ort_cpu", "ort_cpu_plain", "ort_cpu_int8", "torchscript")
#: GPU backends (python -m benchmarks --cuda): onnxruntime CUDA on the exported graph, on the
#: plain graph, with the EXHAUSTIVE cuDNN search, on the fp16-convolution graph, and torch
#: eager CUDA on the same weights.
CUDA_BACKENDS = ("ort_cuda", "ort_cuda_plain", "ort_cuda_exhaustive", "ort_cuda_fp16", "torch_cuda")


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
        x = test_mel(frames)
        n = 1 if name == "full_44k" and s > 5 else repeats  # one run is already a minute
        out[str(s)] = _time(lambda x=x: run(x), n) / (frames * HOP / RATE)
    return out


def bench(
    name: str, seconds: list[float], repeats: int, cache: Path, threads: int, plain: bool = True
) -> list[dict[str, Any]]:
    """Prepare the graphs, then time each backend in a child process; one row per length.

    ``plain=False`` (``--quick``) skips exporting and timing the unrewritten graph.
    """
    _child(["prepare", name, "--cache", str(cache)] + ([] if plain else ["--no-plain"]))
    backends = [b for b in BACKENDS if plain or b != "ort_cpu_plain"]
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
        for b in backends
    }
    snr = float(_child(["snr", name, "--cache", str(cache)]))
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
            "rtf_ort_int8": rtf["ort_cpu_int8"][k],
            "speedup_int8_vs_fp32": rtf["ort_cpu"][k] / rtf["ort_cpu_int8"][k],
            "int8_snr_db": snr,
            "speedup_ts_vs_eager": rtf["torch_eager"][k] / rtf["torchscript"][k],
        }
        if plain:
            row["rtf_ort_cpu_plain"] = rtf["ort_cpu_plain"][k]
            row["speedup_ort_vs_plain"] = rtf["ort_cpu_plain"][k] / rtf["ort_cpu"][k]
        if name == "full_44k":
            row["ort_gflops"] = FULL_GFLOP_PER_AUDIO_SECOND / row["rtf_ort_cpu"]
            row["int8_equiv_gflops"] = FULL_GFLOP_PER_AUDIO_SECOND / row["rtf_ort_int8"]
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


MODELS = ("demo", "full_44k")


def configs() -> dict[str, dict[str, Any]]:
    """BigVGAN configs of the benchmarked models (random init, seed 0)."""
    from distill_serve.export.demo import demo_vocoder_config
    from distill_serve.export.vocoder import FULL_44K_CONFIG

    return {"demo": demo_vocoder_config(), "full_44k": dict(FULL_44K_CONFIG)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vocoder")
    p.add_argument("action", choices=["prepare", "measure", "snr", "shapes"])
    p.add_argument("model", choices=MODELS)
    # torch_bf16 (autocast, oneDNN AVX512-BF16) is measured on request only
    p.add_argument("backend", nargs="?", choices=[*BACKENDS, *CUDA_BACKENDS, "torch_bf16"])
    p.add_argument("--seconds", default="1.0")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-plain", action="store_true", help="skip the unrewritten graph")
    args = p.parse_args(argv)
    if args.action == "prepare":
        prepare(args.model, args.cache, plain=not args.no_plain)
        return 0
    if args.action == "shapes":
        print(json.dumps(alternating_shapes(args.model, args.backend or "ort_cuda", args.cache)))
        return 0
    if args.action == "snr":
        print(reduced_precision_snr(args.model, args.cache, args.backend or "ort_cpu_int8"))
        return 0
    seconds = [float(x) for x in args.seconds.split(",")]
    result = measure(args.model, args.backend, seconds, args.repeats, args.cache, args.threads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
