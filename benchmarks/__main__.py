"""``python -m benchmarks``: vocoder backends side by side, end to end over gRPC, memory.

Prints tables and writes JSON (default ``benchmarks/results/<host>-<time>.json``) naming the
machine. ``--quick`` (stand-in model, short clips) finishes in about two minutes for CI; it
asserts nothing. ``--cuda`` runs the GPU measurements instead (``benchmarks/cuda.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import e2e, live, machine


def table(rows: list[dict[str, Any]], title: str) -> str:
    if not rows:
        return ""
    keys = list(rows[0])

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    widths = [max(len(k), *(len(fmt(r[k])) for r in rows)) for k in keys]
    lines = [title, "  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))]
    lines += [
        "  ".join(fmt(r[k]).rjust(w) for k, w in zip(keys, widths, strict=True)) for r in rows
    ]
    return "\n".join(lines) + "\n"


def per_model_v2_bundle() -> Path:
    """A Distill user's bundle: an app-shaped ``.distillgan`` with its full-size per-model
    HiFi-GAN V2 vocoder (``benchmarks/app_model.py``), cached beside the demo bundle and
    built by a child process if missing."""
    from distill_serve.bundle import BundleError, load_bundle
    from distill_serve.server.models.demo import demo_bundle_dir

    path = demo_bundle_dir().parent / "per-model-v2-bundle"
    try:
        load_bundle(path)
    except BundleError:
        subprocess.run([sys.executable, "-m", "benchmarks.app_model", str(path)], check=True)
    return path


def stand_in_bundle() -> Path:
    """The stand-in bundle (random small BigVGAN, what the published serving figures used),
    cached next to the demo bundle and built by a child process if missing (torch stays out
    of here)."""
    from distill_serve.bundle import BundleError, load_bundle
    from distill_serve.server.models.demo import demo_bundle_dir

    path = demo_bundle_dir().parent / "stand-in-bundle"
    try:
        load_bundle(path)
    except BundleError:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "distill_serve",
                "export",
                "--stand-in",
                "--quiet",
                "--out",
                str(path),
            ],
            check=True,
        )
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--cuda" in argv:  # the GPU run has its own steps and options (benchmarks/cuda.py)
        from benchmarks import cuda

        return cuda.main([a for a in argv if a != "--cuda"])
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="stand-in model, short clips (CI smoke)")
    p.add_argument("--full-model", action="store_true", help="also the full 44 kHz BigVGAN")
    p.add_argument(
        "--bundle", type=Path, default=None, help="gRPC benchmark bundle (default: the stand-in)"
    )
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache/distill-serve/bench")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write")
    p.add_argument("--live-only", action="store_true", help="only the live-session benchmark")
    args = p.parse_args(argv)

    quick = args.quick
    lengths = [1.0] if quick else [1.0, 5.0, 20.0]
    repeats = 1 if quick else 3
    result: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine.describe(peak=not quick),
        "quick": quick,
    }
    print(f"machine: {result['machine']}", flush=True)

    # gRPC first, then the vocoders (each backend in its own child process): this process
    # never imports torch, so nothing it leaves running competes with what is measured.
    bundle = args.bundle or stand_in_bundle()
    with e2e.server(bundle) as (target, pid):
        result["live"] = live.bench(target, quick)
        print(table(result["live"]["control_latency"], "live: control to first reflecting block"))
        print(table(result["live"]["capacity"], "live: sessions kept in real time"), flush=True)
        if args.live_only:
            return _write(result, args.out, quick)
        seconds = [1.0] if quick else [1.0, 10.0, 30.0]
        result["latency"] = e2e.latency(target, seconds, repeats)
        print(table(result["latency"], "gRPC latency (seconds)"), flush=True)
        clients = [1, 2] if quick else [1, 2, 4, 8]
        result["throughput"], result["memory"] = e2e.throughput(
            target, pid, clients, window_s=4.0 if quick else 20.0, clip_s=1.0 if quick else 2.0
        )
        print(table(result["throughput"], "throughput (audio seconds per wall second)"))
        print(f"server RSS: {result['memory']}", flush=True)

    from benchmarks import vocoder

    rows = []
    if (
        quick
        and args.bundle is not None
        and vocoder.seed_from_bundle("demo", args.cache, args.bundle)
    ):
        print(f"vocoder graphs: {args.bundle}'s (same architecture as 'demo'; nothing exported)")
    for name in ["demo"] + (["full_44k"] if args.full_model else []):
        rows += vocoder.bench(name, lengths, repeats, args.cache, args.threads, plain=not quick)
        print(
            table(
                rows[-len(lengths) :],
                f"vocoder {name}: seconds per second of audio (lower is faster)",
            ),
            flush=True,
        )
    peak = result["machine"].get("fma_peak_gflops")
    for row in rows:
        if "ort_gflops" in row and peak:
            row["ort_pct_of_fma_peak"] = 100 * row["ort_gflops"] / peak
    result["vocoder"] = rows

    return _write(result, args.out, quick)


def _write(result: dict[str, Any], out: Path | None, quick: bool) -> int:
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}{'-quick' if quick else ''}"
    write_result(result, out, stamp)
    return 0


def write_result(result: dict[str, Any], out: Path | None, suffix: str) -> Path:
    """Write ``result`` as JSON to ``out``, default ``benchmarks/results/<host>-<suffix>.json``."""
    out = out or Path("benchmarks/results") / f"{result['machine']['host']}-{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    sys.exit(main())
