"""``python -m benchmarks.bounce``: offline bounces of timeline sessions (docs/api.md).

For each bundle (default: the demo and a full-size per-model HiFi-GAN V2 bundle), against a
server process on this machine: a 60 s unpaced timeline session at 48 kHz stereo from 0 (the
speed-up over real time, and the server's CPU per audio second), then a session started at
30 s (its first audio: the priming of ~2 s before the start) whose samples are compared with
the bounce's from 30 s on (bit-identical on one machine). Writes JSON naming the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import e2e, machine
from benchmarks.__main__ import per_model_v2_bundle, write_result
from benchmarks.stream import _cpu_seconds
from distill_serve.client import Client

RATE = 48000


def _render(target: str, start_s: float, end_s: float) -> tuple[np.ndarray, float, float]:
    """Timeline ``[start_s, end_s)`` unpaced: the audio, its wall time and first audio."""
    with Client(target, timeout=300) as client:
        t0 = time.perf_counter()
        session = client.live(
            "slider", seed=5, sample_rate=RATE, encoding="float32",
            sliders={0: 3, **({1: -4} if start_s > 20.0 else {})},  # in force at the start
            spatial="stereo", start_position=round(start_s * RATE), unpaced=True,
        )  # fmt: skip
        if start_s <= 20.0 < end_s:  # automation at 20 s (positions must not decrease)
            session.set_sliders({1: -4}, 0.5, position=round(20.0 * RATE))
        session.stop(position=round(end_s * RATE))
        blocks, first = [], None
        for block in session:
            first = first if first is not None else time.perf_counter() - t0
            blocks.append(block.audio)
        wall = time.perf_counter() - t0
    return np.concatenate(blocks, axis=1), wall, first or 0.0


def bounce(bundle: Path, seconds: float) -> dict[str, Any]:
    with e2e.server(bundle) as (target, pid):
        _render(target, 0.0, 2.0)  # warm-up
        cpu0 = _cpu_seconds(pid)
        whole, wall, first = _render(target, 0.0, seconds)
        cpu = _cpu_seconds(pid) - cpu0
        seek_s = seconds / 2
        part, _, seek_first = _render(target, seek_s, seconds)
    a = round(seek_s * RATE)
    n = min(part.shape[1], whole.shape[1] - a) - round(0.2 * RATE)  # before the fade-out
    return {
        "seconds": seconds,
        "wall_s": wall,
        "speed_vs_real_time": seconds / wall,
        "server_cpu_s_per_audio_s": cpu / seconds,
        "first_audio_s": first,
        "seek_first_audio_s": seek_first,
        "seek_bit_identical": bool(np.array_equal(part[:, :n], whole[:, a : a + n])),
        "seek_compared_s": n / RATE,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bounce", description=__doc__)
    p.add_argument("--bundle", action="append", default=None, help="bundle dir")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from distill_serve.server.models.demo import ensure_demo_bundle

    bundles = (
        [Path(b) for b in args.bundle]
        if args.bundle
        else [ensure_demo_bundle(), per_model_v2_bundle()]
    )
    result: dict[str, Any] = {"machine": machine.describe(peak=False), "bundles": {}}
    for bundle in bundles:
        r = bounce(bundle, args.seconds)
        result["bundles"][bundle.name] = r
        print(
            f"{bundle.name}: {r['seconds']:g} s bounced in {r['wall_s']:.2f} s "
            f"({r['speed_vs_real_time']:.1f}x real time, server CPU "
            f"{r['server_cpu_s_per_audio_s']:.3f} s per audio s); first audio "
            f"{r['first_audio_s']:.2f} s, after a seek {r['seek_first_audio_s']:.2f} s; "
            f"seek bit-identical: {r['seek_bit_identical']} over {r['seek_compared_s']:.1f} s",
            flush=True,
        )
    write_result(result, args.out, "bounce")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
