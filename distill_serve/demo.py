"""``distill-serve demo``: the main job on the embedded demo bundle, end to end.

Builds (or reuses) the demo bundle, starts a server on a free loopback port, streams one
clip per chunk mode through the Python client, writes WAVs and prints the timings.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import soundfile as sf

from distill_serve.client.client import AsyncClient
from distill_serve.server.api.server import DistillServer, ServerConfig, build_engine
from distill_serve.server.engine.engine import EngineConfig

REQUESTS: dict[str, dict[str, Any]] = {
    "crossfade": {},
    "latent_interp": {"steps_between": 3},
    "slider": {"sliders": {0: 4, 3: -6}, "evolution_amount": 0.5},
}


async def _demo(out: Path, duration: float) -> None:
    config = ServerConfig(port=0, engine=EngineConfig(use_cuda=True))
    engine = await asyncio.to_thread(build_engine, config)
    server = DistillServer(config, engine)
    port = await server.start()
    print(
        f"demo server on 127.0.0.1:{port}, bundle {engine.bundle.root}, "
        f"provider {engine.primary_provider}"
    )
    out.mkdir(parents=True, exist_ok=True)
    try:
        async with AsyncClient(f"127.0.0.1:{port}") as client:
            for mode, options in REQUESTS.items():
                r = await client.generate_streamed(
                    mode, duration, seed=42, spatial="stereo", **options
                )
                path = out / f"{mode}.wav"
                sf.write(path, r.audio.T, r.sample_rate, subtype="PCM_16")
                print(
                    f"{mode:>13}: {path} {r.duration_s:.2f} s @ {r.sample_rate} Hz, "
                    f"first audio {r.client_first_audio_s * 1000:.0f} ms, "
                    f"total {r.client_total_s:.2f} s"
                )
    finally:
        await server.stop(grace=1.0)


def run_demo(out: Path, duration: float = 10.0) -> int:
    asyncio.run(_demo(out, duration))
    return 0
