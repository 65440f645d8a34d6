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
    decodes = samples.get("distill_decoder_run_generations_count", 0.0)
    served = samples.get("distill_decoder_run_generations_sum", 0.0)
    return {
        "runs": runs,
        "mean_batch": steps / runs if runs else 0.0,
        "decoder_runs": decodes,
        "decoder_generations_per_run": served / decodes if decodes else 0.0,
        "deadline_misses": samples.get("distill_vocoder_step_deadline_misses_total", 0.0),
        "fallbacks": sum(v for k, v in samples.items() if k.startswith("distill_cuda_fallbacks")),
    }


def _ladder(target: str, ladder: tuple[int, ...], seconds: float) -> dict[str, Any]:
    """Live sessions at lookahead 0.3 s, up the ladder until a rung underruns."""
    rows = []
    held = 0
    for n in ladder:
        row = live.capacity(target, [n], LOOKAHEAD, seconds)[0]
        rows.append(row)
        if not row["real_time"]:
            break
        held = n
    return {"ladder": rows, "held": held}


def _pool(samples: dict[str, float]) -> dict[str, float]:
    """The state pool's use, from its Prometheus series."""
    return {
        "rows": samples.get("distill_state_pool_rows", 0.0),
        "rows_in_use": samples.get("distill_state_pool_rows_in_use", 0.0),
        "overflow_steps": samples.get("distill_state_pool_overflow_steps_total", 0.0),
    }


def state_pool_ab(bundle: Path, dry_run: bool) -> dict[str, Any]:
    """Live sessions held on the device path with the streams' states resident in the device
    pool (the default) and carried with every batch (``--state-pool-mb 0``), side by side on
    one bundle (the full 122 M model's 5 MB states are where it should show). The dry run
    serves the fault-injection stand-in of the device path on CPU."""
    ladder = DRY_LADDER if dry_run else GPU_LADDER
    seconds = 2.0 if dry_run else 5.0
    device = ("--fault-injection",) if dry_run else ()
    out: dict[str, Any] = {}
    for label, pool in (("pool", ()), ("no_pool", ("--state-pool-mb", "0"))):
        port = _free_port()
        args = (
            "--vocoder-path", "stream", "--live-capacity", "0",
            "--max-concurrent", str(max(ladder) + 40), "--metrics-port", str(port),
            *device, *pool,
        )  # fmt: skip
        with e2e.server(bundle, extra_args=args, cuda=not dry_run) as (target, _):
            with Client(target, timeout=60) as c:
                provider = c.info().execution_provider
            held = _ladder(target, ladder, seconds)
            out[label] = {"provider": provider, "live": held, "pool": _pool(_scrape(port))}
    return out


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
        out["live"] = _ladder(target, ladder, seconds)
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
