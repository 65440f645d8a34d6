"""Live sessions over gRPC: how soon a control change arrives, and how many sessions one
server keeps in real time.

- Control latency: a slider session, a change every ``interval_s``; the time from sending a
  change to the arrival of the first block that reflects it (``control_sequence``). What a
  listener hears also waits for the client's own buffer (at least the lookahead).
- Capacity: ``n`` sessions at once, each played by a model client that starts playback one
  lookahead after its first block and counts blocks that arrive after their play time
  (underruns). A server sustains ``n`` when no session underruns and it admitted all ``n``
  (beyond its live capacity it answers RESOURCE_EXHAUSTED, counted as ``rejected``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import numpy as np

from distill_serve.client import Client, DistillError

SLIDERS = {0: 4}


def control_latency(
    target: str, lookahead: float, changes: int, interval_s: float
) -> dict[str, Any]:
    latencies: list[float] = []
    ahead: list[float] = []
    sent: dict[int, float] = {}
    with Client(target, timeout=600) as c:
        session = c.live("slider", seed=1, lookahead=lookahead, sliders=SLIDERS)
        start = time.perf_counter()
        received = 0.0
        next_change = start + 1.0  # let the pacing settle first
        block_s = 0.0
        for block in session:
            now = time.perf_counter()
            rate = block.header.sample_rate
            block_s = max(block_s, block.audio.shape[1] / rate)  # the last is the fade
            received += block.audio.shape[1] / rate
            ahead.append(received - (now - start))
            for seq in [s for s in sent if block.control_sequence >= s]:
                latencies.append(now - sent.pop(seq))
            if now >= next_change and len(latencies) + len(sent) < changes:
                position = 8 if (len(latencies) + len(sent)) % 2 else -8
                sent[session.set_sliders({1: position})] = time.perf_counter()
                next_change = now + interval_s
            elif len(latencies) >= changes:
                session.stop()
    return {
        "lookahead_s": lookahead,
        "block_s": block_s,
        "changes": len(latencies),
        "control_to_block_p50_s": float(np.median(latencies)),
        "control_to_block_max_s": float(np.max(latencies)),
        "max_ahead_s": float(np.max(ahead[1:])),
    }


def _play(target: str, seed: int, lookahead: float, seconds: float, out: dict[str, Any]) -> None:
    """One session played in real time by a model client: count late blocks."""
    underruns = 0
    first: float | None = None
    played = 0.0
    out.update(underruns=0, seconds=0.0, rejected=False)
    with Client(target, timeout=600) as c:
        session = c.live("crossfade", seed=seed, lookahead=lookahead)
        try:
            for block in session:
                now = time.perf_counter()
                rate = block.header.sample_rate
                if first is None:
                    first = now
                due = first + lookahead + played  # when the device needs this block
                if now > due:
                    underruns += 1
                played += block.audio.shape[1] / rate
                if played >= seconds and not out.get("stopping"):
                    out["stopping"] = True
                    session.stop()
        except DistillError as exc:  # the server's admission said no (live capacity)
            if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            out["rejected"] = True
    out.update(underruns=underruns, seconds=played)


def capacity(  # type: ignore[type-arg]
    target: str, sessions: list[int], lookahead: float, seconds: float, stagger_s: float = 0.0
) -> list[dict]:
    """Per count ``n``: ``n`` sessions played at once (each started ``stagger_s`` after the
    one before), late blocks counted; stops at the first count that underruns."""
    rows = []
    for n in sessions:
        results: list[dict[str, Any]] = [{} for _ in range(n)]
        threads = [
            threading.Thread(target=_play, args=(target, k, lookahead, seconds, results[k]))
            for k in range(n)
        ]
        for k, t in enumerate(threads):
            if k:
                time.sleep(stagger_s)
            t.start()
        for t in threads:
            t.join()
        late = [r["underruns"] for r in results]
        rejected = sum(1 for r in results if r["rejected"])
        rows.append(
            {
                "sessions": n,
                "lookahead_s": lookahead,
                "seconds_each": seconds,
                "stagger_s": stagger_s,
                "sessions_with_underruns": sum(1 for u in late if u),
                "late_blocks": sum(late),
                "rejected": rejected,
                "real_time": all(u == 0 for u in late) and not rejected,
            }
        )
        if not rows[-1]["real_time"]:
            break  # more sessions only underrun more
    return rows


def bench(target: str, quick: bool) -> dict[str, Any]:
    lookaheads = [0.3] if quick else [0.1, 0.3, 1.0]
    latency = [
        control_latency(target, la, changes=3 if quick else 10, interval_s=0.7) for la in lookaheads
    ]
    sessions = [1, 2] if quick else [1, 2, 3, 4, 5, 6, 8]
    cap = capacity(target, sessions, lookahead=0.3, seconds=3.0 if quick else 10.0)
    return {"control_latency": latency, "capacity": cap}
