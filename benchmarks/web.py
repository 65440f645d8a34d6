"""``python -m benchmarks.web``: the web edge's overhead against gRPC, side by side in one run.

One server process (``serve --http-port``) on this machine. In each round, the same live
sessions (slider mode, 48 kHz stereo Opus as a browser asks for, lookahead 0.3 s, paced in
real time) run over gRPC and then over WebSocket (the order alternates between rounds); the
clients only receive (no decoding). Per edge: the server's CPU seconds per live audio second
(/proc, the whole process) and the first audio of each session (from opening the call or
socket); then first audio again of single sessions started one at a time, the edges
alternating (``--starts`` each). Writes JSON naming the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf import json_format

from benchmarks import e2e, machine
from benchmarks.__main__ import per_model_v2_bundle, write_result
from benchmarks.stream import _cpu_seconds
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc

RATE = 48000
LOOKAHEAD_S = 0.3


def _spec(seed: int) -> pb.GenerationSpec:
    return pb.GenerationSpec(
        mode=pb.CHUNK_MODE_SLIDER,
        seed=seed,
        sample_rate=RATE,
        encoding=pb.AUDIO_ENCODING_OPUS,
        spatial=pb.SPATIAL_MODE_STEREO_HAAS,
        sliders=pb.SliderPositions(positions=[pb.SliderPosition(index=0, position=3)]),
    )


async def _grpc_session(target: str, seed: int, seconds: float) -> float:
    """One paced gRPC live session of ``seconds``; its first audio, seconds."""
    stop = asyncio.Event()

    async def requests() -> Any:
        yield pb.GenerateLiveRequest(start=pb.LiveStart(spec=_spec(seed), lookahead_s=LOOKAHEAD_S))
        await stop.wait()
        yield pb.GenerateLiveRequest(control=pb.LiveControl(sequence=1, stop=True))

    t0 = time.perf_counter()
    first = None
    frames = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.DistillServiceStub(channel).GenerateLive(requests())
        async for reply in call:
            if reply.WhichOneof("event") == "audio":
                first = first if first is not None else time.perf_counter() - t0
                frames += reply.audio.num_samples
                if frames >= seconds * RATE:
                    stop.set()
    return first or 0.0


async def _ws_session(url: str, seed: int, seconds: float) -> float:
    """The same session over the web edge's WebSocket."""
    start = pb.GenerateLiveRequest(start=pb.LiveStart(spec=_spec(seed), lookahead_s=LOOKAHEAD_S))
    t0 = time.perf_counter()
    first = None
    frames = 0
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=("distill.v1",)) as ws,
    ):
        await ws.send_str(json_format.MessageToJson(start))
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                first = first if first is not None else time.perf_counter() - t0
                frames += int.from_bytes(msg.data[8:12], "little")
                if frames >= seconds * RATE and not ws.closed:
                    await ws.send_str(json.dumps({"control": {"sequence": "1", "stop": True}}))
    return first or 0.0


async def _round(edge: str, address: str, sessions: int, seconds: float) -> list[float]:
    run = _grpc_session if edge == "grpc" else _ws_session
    return list(await asyncio.gather(*(run(address, 11 + i, seconds) for i in range(sessions))))


def compare(
    bundle: Path, sessions: int, seconds: float, rounds: int, starts: int
) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        http_port = s.getsockname()[1]
    ws_url = f"ws://127.0.0.1:{http_port}/v1/live"
    per: dict[str, dict[str, list[float]]] = {
        e: {"cpu_s_per_audio_s": [], "first_audio_s": [], "alone_first_audio_s": []}
        for e in ("grpc", "websocket")
    }
    with e2e.server(bundle, extra_args=("--http-port", str(http_port))) as (target, pid):
        asyncio.run(_round("grpc", target, 1, 2.0))  # warm-up, both edges
        asyncio.run(_round("websocket", ws_url, 1, 2.0))
        for r in range(rounds):
            order = ("grpc", "websocket") if r % 2 == 0 else ("websocket", "grpc")
            for edge in order:
                address = target if edge == "grpc" else ws_url
                cpu0 = _cpu_seconds(pid)
                firsts = asyncio.run(_round(edge, address, sessions, seconds))
                cpu = _cpu_seconds(pid) - cpu0
                per[edge]["cpu_s_per_audio_s"].append(cpu / (sessions * seconds))
                per[edge]["first_audio_s"].extend(firsts)
                print(
                    f"round {r + 1} {edge}: {cpu / (sessions * seconds):.4f} CPU s per audio s, "
                    f"first audio {statistics.median(firsts) * 1000:.0f} ms",
                    flush=True,
                )
        # first audio alone: single sessions, the edges alternating (no other session runs)
        for i in range(starts):
            for edge in ("grpc", "websocket") if i % 2 == 0 else ("websocket", "grpc"):
                address = target if edge == "grpc" else ws_url
                per[edge]["alone_first_audio_s"].extend(asyncio.run(_round(edge, address, 1, 0.5)))
    summary: dict[str, dict[str, Any]] = {
        e: {
            "cpu_s_per_audio_s": statistics.mean(v["cpu_s_per_audio_s"]),
            "first_audio_ms_median": statistics.median(v["first_audio_s"]) * 1000,
            "per_round_cpu_s_per_audio_s": v["cpu_s_per_audio_s"],
            "first_audio_s": v["first_audio_s"],
            "alone_first_audio_ms_median": statistics.median(v["alone_first_audio_s"]) * 1000,
            "alone_first_audio_s": v["alone_first_audio_s"],
        }
        for e, v in per.items()
    }
    g, w = summary["grpc"], summary["websocket"]
    return {
        "bundle": bundle.name,
        "sessions": sessions,
        "seconds": seconds,
        "rounds": rounds,
        "edges": summary,
        "cpu_ratio_websocket_vs_grpc": w["cpu_s_per_audio_s"] / g["cpu_s_per_audio_s"],
        "first_audio_ms_websocket_minus_grpc": w["first_audio_ms_median"]
        - g["first_audio_ms_median"],
        "alone_first_audio_ms_websocket_minus_grpc": w["alone_first_audio_ms_median"]
        - g["alone_first_audio_ms_median"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__)
    p.add_argument(
        "--bundle", type=Path, action="append", default=None,
        help="bundle dir (default: the demo and a full-size per-model HiFi-GAN V2 bundle)",
    )  # fmt: skip
    p.add_argument("--sessions", type=int, default=2, help="live sessions at once")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per session")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--starts", type=int, default=10, help="single sessions per edge, first audio")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from distill_serve.server.models.demo import ensure_demo_bundle

    bundles = args.bundle or [ensure_demo_bundle(), per_model_v2_bundle()]
    result: dict[str, Any] = {"machine": machine.describe(peak=False), "bundles": {}}
    for bundle in bundles:
        r = compare(bundle, args.sessions, args.seconds, args.rounds, args.starts)
        result["bundles"][bundle.name] = r
        g, w = r["edges"]["grpc"], r["edges"]["websocket"]
        print(
            f"{bundle.name}, {args.sessions} sessions x {args.seconds:g} s x {args.rounds} "
            f"rounds: server CPU per live audio s gRPC {g['cpu_s_per_audio_s']:.4f}, WebSocket "
            f"{w['cpu_s_per_audio_s']:.4f} ({r['cpu_ratio_websocket_vs_grpc']:.3f}x); first "
            f"audio gRPC {g['first_audio_ms_median']:.0f} ms, WebSocket "
            f"{w['first_audio_ms_median']:.0f} ms "
            f"({r['first_audio_ms_websocket_minus_grpc']:+.0f} ms); one session alone: gRPC "
            f"{g['alone_first_audio_ms_median']:.0f} ms, WebSocket "
            f"{w['alone_first_audio_ms_median']:.0f} ms "
            f"({r['alone_first_audio_ms_websocket_minus_grpc']:+.0f} ms)",
            flush=True,
        )
    write_result(result, args.out, "web")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
