"""``python -m benchmarks.stream``: the streaming vocoder path against the block path, side by
side in one run, on the demo bundle, a Distill user's bundle (a ``.distillgan`` with its
full-size per-model HiFi-GAN V2, ``benchmarks/app_model.py``) and the stand-in (issues:
streaming vocoder and step scheduler; Distill models).

Per bundle, first the streaming graph alone (its own seconds per audio second at the live step
of 8 frames, batch 1 and batch 8, on this process's cores: the vocoder-bound limit of live
sessions is 1 / that), then one ``distill-serve serve --vocoder-path P`` per path P:

- live sessions kept in real time at lookahead 0.3 s (``benchmarks.live``'s model players,
  no late block over ``--live-s`` seconds each), climbing until one underruns, every session
  started at once; then on from there with the sessions started 0.5 s apart;
- CPU seconds of the server process per live audio second at the highest count it held,
  and the serving overhead: the share of that CPU time that is not the streaming graph,
  measured in the same window (the server's ``distill_vocoder_step_cpu_seconds`` counter:
  its step runners' thread CPU time in the graph), and, for comparison, against the graph's
  standalone cost measured above (which also counts the graph running slower in the
  server than alone: contention, and this machine's drift between the two measurements);
- throughput in audio seconds per second at 1 / 4 / 8 / 16 clients (2 s streamed clips)
  and first audio p50 / p99 at 8 clients;
- the batch sizes the scheduler formed and the share of steps that missed their deadline
  (from the server's Prometheus endpoint).

``--step-batch auto,32`` serves the stream path once per value (``serve --step-batch``): the
server's own choice beside batching up to 32, in the same run (results ``stream`` and
``stream+batch32``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import e2e, live, machine
from benchmarks.__main__ import per_model_v2_bundle, stand_in_bundle, table, write_result
from distill_serve.bundle import STREAM_OPEN_END
from distill_serve.client import Client

LOOKAHEAD = 0.3
#: every count up to 16 (the per-model V2 bundle holds 12-13 on two cores), then in steps of 4
LADDER = (*range(1, 17), 20, 24, 28, 32)
CLIENTS = (1, 4, 8, 16)
#: seconds between session starts in the staggered climb
STAGGER_S = 0.5


def _run_threads(targets: list[Callable[[], None]]) -> float:
    """Run each target in its own thread, all at once; the wall seconds until all are done."""
    threads = [threading.Thread(target=t) for t in targets]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def graph_cost(bundle: Path, frames: int = 8, batches: tuple[int, ...] = (1, 8)) -> dict[str, Any]:
    """The streaming graph alone, run as the server runs it: one single-threaded session
    (no buffer-reuse planning) stepped from one thread per core at once. Per batch size:
    CPU seconds per audio second (one thread's own cost) and the sessions the cores could
    keep in real time if the graph were all the work (the vocoder-bound limit)."""

    import onnxruntime as ort

    from distill_serve.bundle import load_bundle

    b = load_bundle(bundle)
    stream = b.manifest["vocoder"]["stream"]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.enable_mem_reuse = False
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(b.graph("vocoder_stream")), opts, providers=["CPUExecutionProvider"]
    )
    n_mels = int(b.manifest["vocoder_mel"]["num_mels"])
    rate = int(b.manifest["geometry"]["vocoder_rate"])
    hop = int(b.manifest["geometry"]["vocoder_hop"])
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"step_frames": frames, "threads": cores}
    for batch in batches:
        feed = {
            "mel": np.full((batch, n_mels, frames), -5.0, np.float32),
            "position": np.full((batch, 1), 100, np.int64),
            "state": np.zeros((batch, int(stream["state_size"])), np.float32),
        }
        if "end" in {i.name for i in session.get_inputs()}:  # bundles since 2026-12-06
            feed["end"] = np.full((batch, 1), STREAM_OPEN_END, np.int64)
        session.run(None, feed)
        runs = max(5, int(40 / batch))
        cpu: list[float] = []

        def work(runs: int = runs, feed: dict[str, Any] = feed, cpu: list[float] = cpu) -> None:
            t0 = time.thread_time()
            for _ in range(runs):
                session.run(None, feed)
            cpu.append(time.thread_time() - t0)

        wall = _run_threads([work] * cores)
        audio_s = runs * batch * frames * hop / rate  # per thread
        out[f"batch{batch}_cpu_s_per_audio_s"] = float(np.mean(cpu)) / audio_s
        out[f"batch{batch}_vocoder_bound_sessions"] = cores * audio_s / wall
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    """The server's Prometheus samples (name{labels} -> value), summed over models (the
    ``model`` label is left out of the keys)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if k != "model"}
            key = s.name + (
                "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
                if labels
                else ""
            )
            samples[key] = samples.get(key, 0.0) + float(s.value)
    return samples


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _graph_cpu(port: int) -> float:
    """The step runners' CPU seconds in the streaming graph so far (0 on the block path)."""
    return _scrape(port).get("distill_vocoder_step_cpu_seconds_total", 0.0)


def live_capacity(target: str, pid: int, port: int, seconds: float) -> dict[str, Any]:
    """Climb :data:`LADDER` until a session underruns, every session started at once; CPU
    per audio second at the best, all of it and the streaming graph's part. Then climb on
    from there with the sessions started :data:`STAGGER_S` apart: what the cores keep once
    running, without the burst of every session filling its lookahead at the same moment
    (``held_staggered``)."""
    best: dict[str, Any] = {"sessions": 0}
    rows = []
    for n in LADDER:
        cpu0, graph0 = _cpu_seconds(pid), _graph_cpu(port)
        row = live.capacity(target, [n], LOOKAHEAD, seconds)[0]
        cpu, graph = _cpu_seconds(pid) - cpu0, _graph_cpu(port) - graph0
        row["server_cpu_s_per_audio_s"] = cpu / (n * seconds)
        if graph:  # the stream path: what is not the graph is the serving overhead
            row["graph_cpu_s_per_audio_s"] = graph / (n * seconds)
            row["serving_overhead_share"] = 1 - graph / cpu
        rows.append(row)
        if not row["real_time"]:
            break
        best = row
    held = staggered = best["sessions"]
    if held:  # none held at once: none staggered either (one session has nothing to stagger)
        for n in (m for m in LADDER if m > held):
            row = live.capacity(target, [n], LOOKAHEAD, seconds, stagger_s=STAGGER_S)[0]
            rows.append(row)
            if not row["real_time"]:
                break
            staggered = n
    out = {"ladder": rows, "held": held, "held_staggered": staggered, "at_best": best}
    if graph_s := best.get("graph_cpu_s_per_audio_s"):
        # the vocoder-bound limit from the graph's cost as served, in the same window
        out["served_vocoder_bound_sessions"] = (os.cpu_count() or 1) / graph_s
    return out


def clients(target: str, n: int, window_s: float, clip_s: float) -> dict[str, Any]:
    """``n`` clients streaming ``clip_s`` clips for ``window_s``: audio s per s, first audio."""
    firsts: list[float] = []
    done = [0] * n
    stop = time.perf_counter() + window_s

    def work(k: int) -> None:
        with Client(target, timeout=600) as c:
            while time.perf_counter() < stop:
                r = c.generate_streamed("crossfade", clip_s, seed=k)
                firsts.append(r.client_first_audio_s)
                done[k] += 1

    wall = _run_threads([lambda k=k: work(k) for k in range(n)])
    return {
        "clients": n,
        "audio_s_per_s": sum(done) * clip_s / wall,
        "first_audio_p50_s": float(np.percentile(firsts, 50)),
        "first_audio_p99_s": float(np.percentile(firsts, 99)),
    }


def one_path(
    bundle: Path, path: str, live_s: float, window_s: float, step_batch: str = "auto"
) -> dict[str, Any]:
    ticks = machine.cpu_ticks()
    # The server's own estimate first; then one that admits every session (--live-capacity
    # 0), so the ladder finds where sessions really underrun and the estimate can be judged.
    chosen = () if step_batch == "auto" else ("--step-batch", step_batch)
    with (
        e2e.server(bundle, extra_args=("--vocoder-path", path, *chosen)) as (target, _pid),
        Client(target, timeout=60) as c,
    ):
        estimate = c.info().live_capacity
    port = _free_port()
    extra = ("--vocoder-path", path, "--metrics-port", str(port), "--live-capacity", "0", *chosen)
    with e2e.server(bundle, max_concurrent=40, extra_args=extra) as (target, pid):
        with Client(target, timeout=60) as c:
            info = c.info()
            c.generate("crossfade", 1.0, seed=0)  # warm-up
        out: dict[str, Any] = {"path": info.vocoder_path, "live_capacity_estimate": estimate}
        out["live"] = live_capacity(target, pid, port, live_s)
        out["throughput"] = [clients(target, n, window_s, 2.0) for n in CLIENTS]
        m = _scrape(port)
    steps = m.get("distill_vocoder_step_batch_size_count", 0.0)
    total = m.get("distill_vocoder_step_batch_size_sum", 0.0)
    hist = {}
    previous = 0.0
    for edge in (1, 2, 4, 8, 16, 32):
        cum = m.get(f"distill_vocoder_step_batch_size_bucket{{le={float(edge)}}}", 0.0)
        hist[str(edge)] = cum - previous
        previous = cum
    # CPU time the hypervisor took for other guests meanwhile (figures measured with much of
    # it are of a slower machine)
    out["steal_share"] = machine.steal_share(ticks, machine.cpu_ticks())
    out["scheduler"] = {
        "runs": steps,
        "steps": total,
        "mean_batch": total / steps if steps else None,
        "runs_by_batch_size": hist,
        "missed_share": m.get("distill_vocoder_step_deadline_misses_total", 0.0) / total
        if total
        else None,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.stream", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--bundle", action="append", default=None, help="bundle dir (default: demo and stand-in)"
    )
    p.add_argument("--paths", default="block,stream")
    p.add_argument(
        "--step-batch",
        default="auto",
        help="comma-separated serve --step-batch values, each served in turn on the stream "
        "path (auto: the server's own choice; e.g. auto,32 compares it with batching)",
    )
    p.add_argument("--live-s", type=float, default=20.0, help="seconds each live session plays")
    p.add_argument(
        "--window-s", type=float, default=10.0, help="throughput window per client count"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from distill_serve.server.models.demo import ensure_demo_bundle

    bundles = (
        [Path(b) for b in args.bundle]
        if args.bundle
        else [ensure_demo_bundle(), per_model_v2_bundle(), stand_in_bundle()]
    )
    result: dict[str, Any] = {"machine": machine.describe(peak=False), "bundles": {}}
    for bundle in bundles:
        entry: dict[str, Any] = {"graph": graph_cost(bundle)}
        print(f"{bundle.name}: streaming graph alone: {json.dumps(entry['graph'])}", flush=True)
        runs = [
            (path, batch)
            for path in args.paths.split(",")
            for batch in (args.step_batch.split(",") if path == "stream" else ["auto"])
        ]
        for path, batch in runs:
            key = path if batch == "auto" else f"{path}+batch{batch}"
            entry[key] = one_path(bundle, path, args.live_s, args.window_s, batch)
            r = entry[key]
            g = entry["graph"]
            best = r["live"]["at_best"]
            cpu = best.get("server_cpu_s_per_audio_s")
            overhead = best.get("serving_overhead_share")
            served = r["live"].get("served_vocoder_bound_sessions")  # the stream path only
            print(
                f"{bundle.name} {key}: live sessions held {r['live']['held']} "
                f"({r['live']['held_staggered']} started {STAGGER_S} s apart) "
                f"(estimate {r['live_capacity_estimate']}; vocoder-bound "
                f"{g['batch1_vocoder_bound_sessions']:.1f} at batch 1, "
                f"{g['batch8_vocoder_bound_sessions']:.1f} at batch 8, "
                f"{served if served is None else round(served, 1)} as served), server CPU s "
                f"per live audio s {cpu if cpu is None else round(cpu, 3)}, serving overhead "
                f"(not the graph) {overhead if overhead is None else round(overhead, 3)}, "
                f"scheduler {r['scheduler']}, steal {r['steal_share']}",
                flush=True,
            )
            print(table(r["throughput"], f"{bundle.name} {key}: throughput"), flush=True)
            if cpu:  # against the graph alone at batch 1 and 8 (brackets what the runs formed)
                for b in (1, 8):
                    r[f"serving_overhead_share_vs_batch{b}"] = (
                        1 - g[f"batch{b}_cpu_s_per_audio_s"] / cpu
                    )
        result["bundles"][bundle.name] = entry
    write_result(result, args.out, "stream")
    return 0


if __name__ == "__main__":
    sys.exit(main())
