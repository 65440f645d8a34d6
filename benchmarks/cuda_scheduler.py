"""The step scheduler's path on the GPU, for ``python -m benchmarks --cuda`` (``cuda.py``):
per bundle and vocoder path (``stream``: the streaming graph's steps batched on the device
worker; ``block``: the fixed-shape block sessions), against one server each:

- live sessions held in real time at lookahead 0.3 s, climbing :data:`GPU_LADDER` until a
  session underruns (the server admits every session: ``--live-capacity 0``), and the
  server's own live-capacity estimate before and after;
- streamed 2 s clips at 1 / 8 / 32 clients: audio seconds per second (batch 1 against
  batched) and first audio p50 / p99;
- the batch sizes the scheduler formed, its deadline misses and OOM fallbacks (Prometheus);
- the server's GPU memory.

``dry_run`` climbs a tiny ladder with short sessions on the CPU stand-in (the steps of the
script, not the figures).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import e2e, live
from benchmarks.stream import LOOKAHEAD, _scrape, clients
from distill_serve.client import Client

GPU_LADDER = (1, 32, 128, 256, 384, 512)
DRY_LADDER = (1, 2)
CLIENT_COUNTS = (1, 8, 32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _batches(samples: dict[str, float]) -> dict[str, float]:
    """What the scheduler did, from its Prometheus series."""
    runs = samples.get("distill_vocoder_step_batch_size_count", 0.0)
    steps = samples.get("distill_vocoder_step_batch_size_sum", 0.0)
    return {
        "runs": runs,
        "mean_batch": steps / runs if runs else 0.0,
        "deadline_misses": samples.get("distill_vocoder_step_deadline_misses_total", 0.0),
        "fallbacks": sum(v for k, v in samples.items() if k.startswith("distill_cuda_fallbacks")),
    }


def one_path(
    bundle: Path,
    path: str,
    cuda: bool,
    dry_run: bool,
    gpu_memory_mb: Callable[[int], float | None],
) -> dict[str, Any]:
    ladder = DRY_LADDER if dry_run else GPU_LADDER
    seconds = 2.0 if dry_run else 5.0
    window_s, counts = (2.0, (1, 2)) if dry_run else (10.0, CLIENT_COUNTS)
    port = _free_port()
    args = (
        "--vocoder-path", path, "--live-capacity", "0", "--max-concurrent", str(max(ladder) + 40),
        "--metrics-port", str(port),
    )  # fmt: skip
    out: dict[str, Any] = {"path": path}
    with e2e.server(bundle, extra_args=args, cuda=cuda) as (target, pid):
        with Client(target, timeout=60) as c:
            info = c.info()
            out["provider"] = info.execution_provider
            out["vocoder_path"] = info.vocoder_path
        rows = []
        held = 0
        for n in ladder:
            row = live.capacity(target, [n], LOOKAHEAD, seconds)[0]
            rows.append(row)
            if not row["real_time"]:
                break
            held = n
        out["live"] = {"ladder": rows, "held": held}
        out["clients"] = [clients(target, n, window_s, clip_s=2.0) for n in counts]
        out["scheduler"] = _batches(_scrape(port))
        out["gpu_memory_mb"] = gpu_memory_mb(pid)
    # the server's own estimate (measured at start), for comparison with what held
    plain = ("--vocoder-path", path)
    with e2e.server(bundle, extra_args=plain, cuda=cuda) as (target, _), Client(target) as c:
        out["estimated_live_capacity"] = c.info().live_capacity
    return out


def scheduler_paths(
    bundle: Path, dry_run: bool, gpu_memory_mb: Callable[[int], float | None]
) -> dict[str, Any]:
    """The stream path (the scheduler on the device) and the block path, one bundle."""
    cuda = not dry_run
    return {
        path: one_path(bundle, path, cuda, dry_run, gpu_memory_mb) for path in ("stream", "block")
    }
