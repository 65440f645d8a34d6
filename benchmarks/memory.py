"""``python -m benchmarks.memory [BUNDLE]``: the server's memory over a session of large
requests, and what it gives back once idle, with each way of bounding it side by side in one
run (issue 40: RSS 425 MB -> 1.94 GB over such a session, never returned).

Variants (each a fresh ``distill-serve serve``):

- ``before``: glibc's default arenas, no trimming (``--malloc-arenas 0 --no-trim-memory``);
- ``trim``: the defaults (2 arenas, ``malloc_trim`` when generations end);
- ``trim+no-ort-arena``: also onnxruntime's CPU tensors from malloc (``--no-cpu-arena``).

A round is ``--clients`` large streams at once (``--seconds`` s, 96 kHz, float32, dual-seed:
the probe's requests), read whole; RSS is sampled at start, after each round, at its peak
(VmHWM) and after ``--idle`` s with no request. Prints JSON; ``--out`` writes it with the
machine's description.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import e2e, machine
from distill_serve.client import Client

VARIANTS: dict[str, tuple[str, ...]] = {
    "before": ("--malloc-arenas", "0", "--no-trim-memory"),
    "trim": (),
    "trim+no-ort-arena": ("--no-cpu-arena",),
}


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def session(
    target: str, pid: int, clients: int, rounds: int, seconds: float, idle: float
) -> dict[str, Any]:
    start_mb = _status_mb(pid, "VmRSS")
    after_rounds = []
    started = time.perf_counter()
    for r in range(rounds):

        def one(k: int, r: int = r) -> None:
            with Client(target, timeout=600) as c:
                c.generate_streamed("crossfade", seconds, seed=100 * r + k, sample_rate=96000,
                                    encoding="float32", spatial="dual_seed")  # fmt: skip

        threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after_rounds.append(round(_status_mb(pid, "VmRSS")))
    busy_s = time.perf_counter() - started
    time.sleep(idle)
    return {
        "rss_start_mb": round(start_mb),
        "rss_after_each_round_mb": after_rounds,
        "rss_peak_mb": round(_status_mb(pid, "VmHWM")),
        "rss_idle_mb": round(_status_mb(pid, "VmRSS")),
        "session_s": round(busy_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    p.add_argument("bundle", type=Path, nargs="?", default=None, help="default: the demo")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30.0, help="audio per request")
    p.add_argument("--idle", type=float, default=3.0, help="seconds idle before the last sample")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.bundle is None:
        from distill_serve.server.models.demo import ensure_demo_bundle

        args.bundle = ensure_demo_bundle()
    rows = []
    for name, flags in VARIANTS.items():
        with e2e.server(args.bundle, max_concurrent=args.clients, extra_args=flags) as (t, pid):
            row = {"variant": name, "flags": " ".join(flags), **session(
                t, pid, args.clients, args.rounds, args.seconds, args.idle)}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        args.out.write_text(json.dumps({
            "benchmark": "memory", "date": dt.date.today().isoformat(),
            "bundle": str(args.bundle), "clients": args.clients, "rounds": args.rounds,
            "seconds": args.seconds, "machine": machine.describe(peak=False), "rows": rows,
        }, indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
