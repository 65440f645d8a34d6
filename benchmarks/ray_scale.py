"""``python -m benchmarks.ray_scale``: the plain server against Ray Serve with 1, 2 and 4
replicas on this machine: throughput, first streamed audio, and the proxy's cost per call.

Ray binds every interface, so run it in a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && python -m benchmarks.ray_scale --out R.json'

Each replica gets ``cores / replicas`` CPUs in Ray and as many onnxruntime threads, so the
configurations share the same cores (oversubscribing them would measure the OS scheduler).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import e2e, machine
from benchmarks.__main__ import stand_in_bundle
from distill_serve.client import Client

PORT = 50299


def per_call_ms(target: str, calls: int = 60) -> float:
    """Median round trip of GetModelInfo (no generation): what the path itself costs."""
    with Client(target, timeout=30) as c:
        c.info()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            c.info()
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def first_audio_s(target: str, repeats: int = 5) -> float:
    with Client(target, timeout=120) as c:
        return statistics.median(
            c.generate_streamed("crossfade", 5.0, seed=r).client_first_audio_s
            for r in range(repeats)
        )


def measure(target: str, clients: list[int], window_s: float) -> dict[str, Any]:
    rows, _ = e2e.throughput(target, os.getpid(), clients, window_s=window_s, clip_s=2.0)
    return {
        "per_call_ms": per_call_ms(target),
        "first_audio_s": first_audio_s(target),
        "throughput": [
            {k: r[k] for k in ("clients", "audio_s_per_s", "min_per_client", "max_per_client")}
            for r in rows
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ray_scale", description=__doc__)
    p.add_argument("--bundle", type=Path, default=None)
    p.add_argument("--replicas", default="1,2,4")
    p.add_argument("--clients", default="1,4,8")
    p.add_argument("--window-s", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    bundle = args.bundle or stand_in_bundle()
    clients = [int(c) for c in args.clients.split(",")]
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine.describe(peak=False),
        "runs": [],
    }
    with e2e.server(bundle, max_concurrent=8) as (target, _pid):
        row = {"server": "plain", "replicas": 1, **measure(target, clients, args.window_s)}
        print(json.dumps(row), flush=True)
        result["runs"].append(row)

    import ray
    from ray import serve

    from distill_serve.server.engine.engine import EngineConfig
    from distill_serve.server.pipeline.request import Limits
    from distill_serve.server.ray.serve import RayConfig, start

    for n in (int(r) for r in args.replicas.split(",")):
        engine = EngineConfig(use_cuda=False, intra_op_threads=max(1, cores // n))
        ray_config = RayConfig(replicas=n, cpus_per_replica=cores / n)
        started = time.perf_counter()
        start(bundle, engine, Limits(max_concurrent=8), (), ray_config, "127.0.0.1", PORT)
        row: dict[str, Any] = {"server": "ray", "replicas": n}
        row["start_s"] = round(time.perf_counter() - started, 1)
        row.update(measure(f"127.0.0.1:{PORT}", clients, args.window_s))
        print(json.dumps(row), flush=True)
        result["runs"].append(row)
        serve.shutdown()  # a fresh Ray per configuration (redeploying in place did not work)
        ray.shutdown()
    out = args.out or Path("benchmarks/results") / f"ray-scale-{dt.datetime.now():%Y%m%d-%H%M}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
