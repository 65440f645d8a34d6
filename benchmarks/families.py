"""HiFi-GAN universal beside BigVGAN on this machine's CPU, in one run.

Three bundles, each built once into ``--cache`` through the CLI (torch stays out of this
process): the demo (trained decoder + HiFi-GAN universal, 22.05 kHz), BigVGAN v2 at full size
(the official 44 kHz config, random weights: the same cost as the real one) and the stand-in
(small random BigVGAN). For each:

- ``vocoder_s_per_s``: the vocoder graph alone on onnxruntime's CPU provider, 5 s of mel,
  warm, median of three: seconds of compute per second of audio;
- served over gRPC (a ``distill-serve serve`` subprocess, crossfade, mono, the vocoder's own
  rate): unary time, streamed time to first audio and streamed total, for 1 s and 10 s clips.

``python -m benchmarks.families [--skip-full]`` prints the table and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks import e2e, machine
from benchmarks.__main__ import write_result
from distill_serve.bundle import BundleError, load_bundle

FULL_BIGVGAN = """
from pathlib import Path
from distill_serve.export.demo import make_demo_checkpoint, make_demo_vocoder
make_demo_checkpoint(Path({ckpt!r}))
make_demo_vocoder(Path({voc!r}), channels=1536)  # the official 44 kHz config
"""


def build(cache: Path, name: str) -> Path:
    """The bundle ``name`` ("demo", "bigvgan_full", "stand_in") under ``cache``, built once."""
    out = cache / name
    try:
        load_bundle(out)
        return out
    except BundleError:
        pass
    cli = [sys.executable, "-m", "distill_serve", "export", "--quiet", "--out", str(out)]
    if name == "demo":
        subprocess.run([*cli, "--demo"], check=True)
    elif name == "stand_in":
        subprocess.run([*cli, "--stand-in"], check=True)
    else:
        ckpt, voc = cache / "full.distill", cache / "bigvgan_full"
        subprocess.run(
            [sys.executable, "-c", FULL_BIGVGAN.format(ckpt=str(ckpt), voc=str(voc))], check=True
        )
        subprocess.run([*cli, "--checkpoint", str(ckpt), "--vocoder", str(voc)], check=True)
    return out


def vocoder_cost(bundle: Path, seconds: float = 5.0, repeats: int = 3) -> float:
    """Seconds of onnxruntime CPU compute per second of audio, vocoder graph alone."""
    m = json.loads((bundle / "manifest.json").read_text())
    rate, hop = m["geometry"]["vocoder_rate"], m["geometry"]["vocoder_hop"]
    frames = round(seconds * rate / hop)
    mel = np.random.default_rng(0).standard_normal((1, m["vocoder_mel"]["num_mels"], frames)) - 5
    session = ort.InferenceSession(str(bundle / "vocoder.onnx"), providers=["CPUExecutionProvider"])
    feed = {"mel": mel.astype(np.float32)}
    session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / (frames * hop / rate)


def served(bundle: Path, seconds: list[float], repeats: int) -> list[dict[str, Any]]:
    """Crossfade, mono, at the vocoder's own rate, over gRPC (``e2e.latency``)."""
    with e2e.server(bundle) as (target, _pid):
        rows = e2e.latency(target, seconds, repeats, modes={"crossfade": {}})
    for row in rows:
        row["stream_realtime_factor"] = row["audio_s"] / row["stream_total_s"]
    return rows


def bench(cache: Path, names: list[str], repeats: int) -> list[dict[str, Any]]:
    out = []
    for name in names:
        bundle = build(cache, name)
        m = json.loads((bundle / "manifest.json").read_text())
        row: dict[str, Any] = {
            "bundle": name,
            "family": m["vocoder"].get("family", "bigvgan"),
            "params_m": round(m["vocoder"]["num_parameters"] / 1e6, 2),
            "rate": m["geometry"]["vocoder_rate"],
            "mels": m["vocoder_mel"]["num_mels"],
            "fmax": m["vocoder_mel"]["fmax"],
            "vocoder_s_per_s": vocoder_cost(bundle),
        }
        row["served"] = served(bundle, [1.0, 10.0], repeats)
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| bundle | vocoder | rate, band | vocoder s per audio s | 1 s unary | 10 s unary "
        "| 10 s first audio | 10 s streamed total |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        one, ten = r["served"][0], r["served"][1]
        top = (r["fmax"] or r["rate"] / 2) / 1000
        band = f"{r['rate'] / 1000:g} kHz, {r['mels']} mels to {top:g} kHz"
        lines.append(
            f"| {r['bundle']} | {r['family']} {r['params_m']} M | {band} | "
            f"{r['vocoder_s_per_s']:.3f} | {one['unary_s']:.2f} s | {ten['unary_s']:.2f} s | "
            f"{ten['stream_first_audio_s'] * 1000:.0f} ms | {ten['stream_total_s']:.2f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.families", description=__doc__)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache/distill-serve/families")
    p.add_argument("--skip-full", action="store_true", help="leave out the full-size BigVGAN")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    names = ["demo", "stand_in"] + ([] if args.skip_full else ["bigvgan_full"])
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine.describe(peak=False),
        "rows": bench(args.cache, names, args.repeats),
    }
    print(markdown(result["rows"]))
    write_result(result, args.out, "families")
    return 0


if __name__ == "__main__":
    sys.exit(main())
