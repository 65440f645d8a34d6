"""End to end over gRPC on loopback: a `distill-serve serve` subprocess, unary latency and
streaming time to first audio per mode, throughput under concurrency, server memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from distill_serve.client import Client

MODES = {
    "crossfade": {},
    "latent_interp": {"steps_between": 3},
    "slider": {"sliders": {0: 4, 3: -6}, "evolution_amount": 0.2},
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def server(
    bundle: Path, max_concurrent: int = 8, extra_args: tuple[str, ...] = (), cuda: bool = False
) -> Iterator[tuple[str, int]]:
    """A ``distill-serve serve`` subprocess on a free loopback port (``cuda``: without
    ``--no-cuda``); yields its address and pid."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distill_serve",
            "serve",
            "--bundle",
            str(bundle),
            "--port",
            str(port),
            *(() if cuda else ("--no-cuda",)),
            "--max-concurrent",
            str(max_concurrent),
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            break
    else:
        raise RuntimeError("server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def latency(
    target: str,
    seconds: list[float],
    repeats: int,
    modes: dict[str, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Median unary time, streamed first audio and streamed total per mode (default
    :data:`MODES`) and clip length."""
    rows = []
    with Client(target, timeout=600) as c:
        c.generate("crossfade", 0.5, seed=0)  # warm-up
        for mode, options in (MODES if modes is None else modes).items():
            for s in seconds:
                unary, first, stream_total = [], [], []
                for r in range(repeats):
                    unary.append(c.generate(mode, s, seed=r, **options).client_total_s)
                    streamed = c.generate_streamed(mode, s, seed=r, **options)
                    first.append(streamed.client_first_audio_s)
                    stream_total.append(streamed.client_total_s)
                u, f = float(np.median(unary)), float(np.median(first))
                rows.append(
                    {
                        "mode": mode,
                        "audio_s": s,
                        "unary_s": u,
                        "stream_first_audio_s": f,
                        "stream_total_s": float(np.median(stream_total)),
                        "first_audio_over_unary": f / u,
                    }
                )
    return rows


def throughput(
    target: str, pid: int, clients: list[int], window_s: float, clip_s: float
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rows = []
    memory = {"idle_mb": rss_mb(pid), "peak_under_load_mb": 0.0}
    for n in clients:
        done = [0] * n
        stop = time.perf_counter() + window_s

        def work(k: int, done: list[int] = done, stop: float = stop) -> None:
            with Client(target, timeout=600) as c:
                while time.perf_counter() < stop:
                    c.generate("crossfade", clip_s, seed=k)
                    done[k] += 1

        threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            memory["peak_under_load_mb"] = max(memory["peak_under_load_mb"], rss_mb(pid))
            time.sleep(0.1)
        wall = time.perf_counter() - start
        rows.append(
            {
                "clients": n,
                "audio_s_per_s": sum(done) * clip_s / wall,
                "requests": sum(done),
                "min_per_client": min(done),
                "max_per_client": max(done),
            }
        )
    memory["after_load_mb"] = rss_mb(pid)
    return rows, memory
