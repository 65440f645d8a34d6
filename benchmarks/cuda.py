"""``python -m benchmarks --cuda``: the GPU measurements of one run, in a fixed budget.

Steps, each recorded in the JSON as it finishes (a step that fails records its error and the
run goes on; steps past ``--budget-s`` are listed as skipped):

1. ``provider``: onnxruntime's providers, why CUDA cannot run (if it cannot), the GPU;
2. ``shapes``: the cost of changing input shapes on one CUDA session (T = 36/72 alternating,
   then fixed), HEURISTIC and EXHAUSTIVE cuDNN search;
3. ``vocoder``: onnxruntime CUDA (exported graph, plain graph, EXHAUSTIVE search, fp16
   convolutions) against torch eager CUDA on the same weights, 1 / 5 / 20 s, each backend in
   its own process; SNR of fp16 against fp32 and of onnxruntime against torch;
4. ``served``: per bundle (demo, full) and provider (CUDA, CPU): per mode, the first request
   after start (cold) and warm unary and first streamed audio for 10 s; CUDA vs CPU audio
   SNR and streamed vs unary SNR; throughput at 1 and 8 clients with each client's count;
   GPU memory of the server;
5. ``oom``: a server with a ``--gpu-mem-limit`` below the weights (must start, on CPU, and
   say why) and one below a run's needs (requests must fall back to CPU and be counted);
6. ``scheduler_<bundle>``: the step scheduler on the device (``cuda_scheduler.py``) against
   the block path: live sessions held at lookahead 0.3 s, 1 / 8 / 32 clients, batch sizes,
   GPU memory (demo, full, and ``--v2-bundle`` when given).

``--dry-run-cpu`` runs every step with CPU stand-ins (CPU providers, torch on CPU, tiny
lengths) to check the script itself before device time is spent on it.

On the GPU machine (see DEVELOPERS.md): export the bundles first (in the background), then
``python -m benchmarks --cuda --demo-bundle /tmp/demo --full-bundle /tmp/full
--out $OUT/cuda.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import e2e, machine
from benchmarks.cuda_scheduler import scheduler_paths, state_pool_ab
from distill_serve.client import Client, DistillError

MODES = e2e.MODES


class Run:
    """The result document, written after every step."""

    def __init__(
        self, out: Path, budget_s: float, dry_run: bool, only: tuple[str, ...] = ()
    ) -> None:
        self.out = out
        self.only = only  # step-name prefixes to run (empty: all)
        self.deadline = time.perf_counter() + budget_s
        self.result: dict[str, Any] = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "dry_run_cpu": dry_run,
            "machine": machine.describe(peak=False),
            "skipped": [],
            "errors": {},
        }

    def step(self, name: str, fn: Callable[[], Any], cost_s: float = 0.0) -> None:
        if self.only and not name.startswith(self.only):
            return  # not asked for in this call (--steps)
        if time.perf_counter() + cost_s > self.deadline:
            self.result["skipped"].append(name)
            print(f"[cuda bench] {name}: skipped (budget)", flush=True)
        else:
            start = time.perf_counter()
            try:
                self.result[name] = fn()
                print(f"[cuda bench] {name} ({time.perf_counter() - start:.0f} s): "
                      f"{json.dumps(self.result[name])[:2000]}", flush=True)  # fmt: skip
            except Exception as exc:  # recorded; the run goes on
                self.result["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
                print(f"[cuda bench] {name}: FAILED {exc}", flush=True)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=2) + "\n")


def provider() -> dict[str, Any]:
    import onnxruntime as ort

    from distill_serve.server.engine.cuda import cuda_unavailable_reason

    gpu = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip() if _has("nvidia-smi") else None  # fmt: skip
    return {
        "onnxruntime": ort.__version__,
        "available": ort.get_available_providers(),
        "cuda_unavailable_reason": cuda_unavailable_reason(),
        "gpu": gpu,
    }


def _has(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


def _vocoder_child(args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.vocoder", *args], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.vocoder {' '.join(args)}: {proc.stderr[-1500:]}")
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def backends(dry_run: bool) -> dict[str, str]:
    """Measured name -> backend of benchmarks.vocoder (CPU stand-ins in a dry run)."""
    if dry_run:  # no plain graph: its dynamo export alone takes a minute on two cores
        return {"ort_cuda": "ort_cpu", "torch_cuda": "torch_eager"}
    names = ("ort_cuda", "ort_cuda_plain", "ort_cuda_exhaustive", "ort_cuda_fp16", "torch_cuda")
    return {name: name for name in names}


def _prepare(model: str, cache: Path, dry_run: bool) -> None:
    """The model's graphs in ``cache`` (a dry run leaves out the plain graph)."""
    _vocoder_child(["prepare", model, "--cache", str(cache)] + (["--no-plain"] if dry_run else []))


def shapes(models: list[str], cache: Path, dry_run: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in models:
        _prepare(model, cache, dry_run)
        for name in ("ort_cuda", "ort_cuda_exhaustive"):
            backend = backends(dry_run).get(name)
            if backend is not None:
                cmd = ["shapes", model, backend, "--cache", str(cache)]
                out[f"{model}/{name}"] = json.loads(_vocoder_child(cmd))
    return out


def vocoder(models: list[str], seconds: list[float], cache: Path, dry_run: bool) -> list[dict]:  # type: ignore[type-arg]
    rows = []
    for model in models:
        _prepare(model, cache, dry_run)
        rtf = {}
        for name, backend in backends(dry_run).items():
            cmd = ["measure", model, backend, "--seconds", ",".join(map(str, seconds)),
                   "--repeats", "1" if dry_run else "3", "--cache", str(cache)]  # fmt: skip
            rtf[name] = json.loads(_vocoder_child(cmd))
        for s in seconds:
            row: dict[str, Any] = {"model": model, "audio_s": s}
            row.update({f"rtf_{name}": r[str(s)] for name, r in rtf.items()})
            row["ort_cuda_vs_torch_cuda"] = rtf["torch_cuda"][str(s)] / rtf["ort_cuda"][str(s)]
            rows.append(row)
        if not dry_run:  # SNRs on the GPU: fp16 vs fp32 graph, ORT CUDA vs torch CUDA
            for backend in ("ort_cuda_fp16", "ort_cuda"):
                snr = float(_vocoder_child(["snr", model, backend, "--cache", str(cache)]))
                for row in rows[-len(seconds) :]:
                    row[f"snr_db_{backend}"] = snr
    return rows


def _snr(a: np.ndarray, b: np.ndarray) -> float:
    err = float(np.sum((a - b) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(float(np.sum(a**2)) / err)


def gpu_memory_mb(pid: int) -> float | None:
    if not _has("nvidia-smi"):
        return None
    lines = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    for line in lines:
        p, _, mem = line.partition(",")
        if p.strip() == str(pid):
            return float(mem)
    return None


def served(
    bundle: Path, cuda: bool, seconds: float, window_s: float, repeats: int = 3
) -> dict[str, Any]:
    """One server: cold and warm latency per mode (``repeats`` warm requests of each kind),
    audio for SNRs, throughput, memory."""
    out: dict[str, Any] = {"bundle": str(bundle), "cuda": cuda, "modes": {}}
    with e2e.server(bundle, cuda=cuda) as (target, pid), Client(target, timeout=900) as c:
        out["provider"] = c.info().execution_provider
        out["provider_note"] = c.info().provider_note
        for mode, options in MODES.items():
            cold = c.generate(mode, seconds, seed=1, **options)
            warm = [c.generate(mode, seconds, seed=1, **options) for _ in range(repeats)]
            streamed = [
                c.generate_streamed(mode, seconds, seed=1, **options) for _ in range(repeats)
            ]
            unary_s = [w.client_total_s for w in warm]
            out["modes"][mode] = {
                "cold_unary_s": cold.client_total_s,
                "warm_unary_s": unary_s,
                "warm_spread": (max(unary_s) - min(unary_s)) / float(np.median(unary_s)),
                "first_audio_s": [s.client_first_audio_s for s in streamed],
                "streamed_vs_unary_snr_db": _snr(warm[0].audio, streamed[0].audio),
                "provider": warm[0].stats.execution_provider if warm[0].stats else "",
                "fallbacks": sum(w.stats.cpu_fallbacks for w in warm if w.stats),
            }
            out.setdefault("_audio", {})[mode] = warm[0].audio
        out["throughput"], memory = e2e.throughput(target, pid, [1, 8], window_s, clip_s=2.0)
        out["server_rss_mb"] = memory["peak_under_load_mb"]
        out["gpu_memory_mb"] = gpu_memory_mb(pid)
    return out


def served_pair(bundle: Path, seconds: float, window_s: float, dry_run: bool) -> dict[str, Any]:
    """The same bundle on CUDA and on CPU, and how far apart their audio is (a dry run makes
    one warm request of each kind: it checks the steps, not the figures)."""
    repeats = 1 if dry_run else 3
    gpu = served(bundle, not dry_run, seconds, window_s, repeats)
    cpu = served(bundle, False, seconds, window_s, repeats)
    snr = {m: _snr(cpu["_audio"][m], gpu["_audio"][m]) for m in MODES}
    for side in (gpu, cpu):
        del side["_audio"]
    return {"cuda": gpu, "cpu": cpu, "cuda_vs_cpu_snr_db": snr}


def oom(bundle: Path, dry_run: bool) -> dict[str, Any]:
    """Two servers with a small CUDA arena: below the weights, and below a run's needs."""
    out: dict[str, Any] = {}
    for label, limit in (("below_weights", 1 << 20), ("below_a_run", 16 << 20)):
        args = ("--gpu-mem-limit", str(limit))
        with (
            e2e.server(bundle, extra_args=args, cuda=not dry_run) as (target, _pid),
            Client(target, timeout=600) as c,
        ):
            info = c.info()
            try:
                clip = c.generate("crossfade", 5.0, seed=2)
                stats = clip.stats
                result = {
                    "provider": stats.execution_provider if stats else "",
                    "cpu_fallbacks": stats.cpu_fallbacks if stats else 0,
                }
            except DistillError as exc:
                result = {"error": str(exc)}
            out[label] = {
                "gpu_mem_limit": limit,
                "served_on": info.execution_provider,
                "provider_note": info.provider_note,
                **result,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks --cuda", description=__doc__)
    p.add_argument("--demo-bundle", type=Path, required=True)
    p.add_argument("--full-bundle", type=Path, default=None)
    p.add_argument("--v2-bundle", type=Path, default=None, help="a per-model HiFi-GAN V2 bundle")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache/distill-serve/bench")
    p.add_argument("--budget-s", type=float, default=480.0, help="stop starting steps after")
    p.add_argument("--dry-run-cpu", action="store_true", help="CPU stand-ins, tiny lengths")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write")
    p.add_argument(
        "--steps", nargs="+", default=(), metavar="PREFIX",
        help="run only the steps whose names start so (e.g. scheduler: a second call)",
    )  # fmt: skip
    args = p.parse_args(argv)
    dry = args.dry_run_cpu
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
    out = args.out or Path("benchmarks/results") / f"cuda-{stamp}.json"
    run = Run(out, args.budget_s, dry, tuple(args.steps))
    models = ["demo"] if dry else ["demo", "full_44k"]
    seconds = [1.0] if dry else [1.0, 5.0, 20.0]
    request_s, window_s = (1.0, 2.0) if dry else (10.0, 10.0)
    run.step("provider", provider)
    run.step("shapes", lambda: shapes(models, args.cache, dry), cost_s=30)
    run.step("vocoder", lambda: vocoder(models, seconds, args.cache, dry), cost_s=60)
    bundles = {"demo": args.demo_bundle, "full": args.full_bundle}
    for name, bundle in bundles.items():
        if bundle is not None:
            run.step(f"served_{name}", lambda b=bundle: served_pair(b, request_s, window_s, dry),
                     cost_s=60)  # fmt: skip
    run.step("oom", lambda: oom(args.demo_bundle, dry), cost_s=20)
    # the step scheduler on the device: live sessions per GPU, batching, first audio
    paths = {"demo": args.demo_bundle, "full": args.full_bundle, "per_model_v2": args.v2_bundle}
    for name, bundle in paths.items():
        if bundle is not None:
            measure = lambda b=bundle: scheduler_paths(b, dry, gpu_memory_mb)  # noqa: E731
            run.step(f"scheduler_{name}", measure, cost_s=120)
    # the streams' states on the device or carried with each batch, on the largest states
    pool_bundle = args.full_bundle or args.demo_bundle
    if pool_bundle is not None:
        run.step("state_pool", lambda: state_pool_ab(pool_bundle, dry), cost_s=90)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
