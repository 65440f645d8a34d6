"""``python -m benchmarks.codecs``: what each reply encoding costs and keeps, on the demo
model's own audio.

For each chunk mode, 10 s of 48 kHz stereo from the demo bundle (pipeline, no server) are
coded as the server codes them (``server/api/audio_out.py``) and decoded as the Python client
decodes them: bytes per audio second, SNR against the float32 audio, PESQ wide-band of the
mid channel at 16 kHz (a transparency proxy: PESQ is made for speech, the demo corpus is
speech and music), and encode CPU seconds per audio second. Writes JSON naming the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from benchmarks import machine
from distill_serve.audio import Encoding, decode
from distill_serve.codecs import read_file
from distill_serve.server.api.audio_out import CODEC_CONTAINER, Container, whole
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.models.demo import ensure_demo_bundle
from distill_serve.server.pipeline.generate import audio_blocks
from distill_serve.server.pipeline.request import (
    ChunkMode,
    GenerationParams,
    Limits,
    RawRequest,
    Spatial,
    validate,
)

RATE = 48000
DURATION_S = 10.0
SETTINGS: list[tuple[str, Encoding, dict[str, int]]] = [
    ("float32", Encoding.FLOAT32, {}),
    ("pcm16", Encoding.PCM16, {}),
    ("flac 16 bit", Encoding.FLAC, {"bits_per_sample": 16}),
    ("flac 24 bit", Encoding.FLAC, {"bits_per_sample": 24}),
    ("opus 64 kbit/s", Encoding.OPUS, {"bitrate_bps": 64000}),
    ("opus 96 kbit/s", Encoding.OPUS, {"bitrate_bps": 96000}),
    ("opus 128 kbit/s", Encoding.OPUS, {"bitrate_bps": 128000}),
]


def _params(engine: Engine, mode: ChunkMode, encoding: Encoding, **codec: int) -> GenerationParams:
    raw = RawRequest(
        mode=mode,
        duration_s=DURATION_S,
        seed=11,
        sample_rate=RATE,
        encoding=encoding,
        spatial=Spatial.STEREO_MID_SIDE,
        slider_positions=[(0, 4)] if mode is ChunkMode.SLIDER else None,
        **codec,
    )
    return validate(raw, engine.model, Limits(), 0, unary=True)


def _decode(data: bytes, p: GenerationParams) -> np.ndarray:
    if p.encoding.is_pcm:
        return decode(data, p.encoding, p.channels)
    return read_file(data)[0]


def _pesq_wb(reference: np.ndarray, estimate: np.ndarray) -> float:
    from pesq import pesq

    ref = resample_poly(reference.mean(axis=0), 1, 3).astype(np.float32)
    est = resample_poly(estimate.mean(axis=0), 1, 3).astype(np.float32)
    return float(pesq(16000, ref, est, "wb"))


def run() -> list[dict[str, Any]]:
    engine = Engine.from_dir(ensure_demo_bundle(), EngineConfig(use_cuda=False))
    rows: dict[str, dict[str, list[float]]] = {}
    for mode in ChunkMode:
        base = _params(engine, mode, Encoding.FLOAT32)
        audio = np.concatenate(list(audio_blocks(engine.runner(), engine.model, base)), axis=1)
        for name, encoding, codec in SETTINGS:
            p = _params(engine, mode, encoding, **codec)
            container = CODEC_CONTAINER.get(encoding, Container.RAW)
            start = time.process_time()
            data = whole(audio, p, container, {})
            cpu = time.process_time() - start
            decoded = _decode(data, p)
            error = np.sum((audio - decoded) ** 2)
            row = rows.setdefault(name, {"bytes": [], "snr": [], "pesq": [], "cpu": []})
            row["bytes"].append(len(data) / DURATION_S)
            row["snr"].append(99.0 if error == 0 else 10 * np.log10(np.sum(audio**2) / error))
            row["pesq"].append(_pesq_wb(audio, decoded))
            row["cpu"].append(cpu / DURATION_S)
    return [
        {
            "encoding": name,
            "kbit_per_s": round(float(np.mean(r["bytes"])) * 8 / 1000, 1),
            "bytes_per_s": round(float(np.mean(r["bytes"]))),
            "snr_db": round(float(np.mean(r["snr"])), 1),
            "pesq_wb": round(float(np.mean(r["pesq"])), 2),
            "encode_cpu_s_per_s": round(float(np.mean(r["cpu"])), 4),
        }
        for name, r in rows.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()
    from benchmarks.__main__ import table

    rows = run()
    info = machine.describe(peak=False)
    print(f"machine: {info['cpu']} ({info['cores']} cores)")
    print(table(rows, f"demo model, 3 modes x {DURATION_S:g} s, {RATE} Hz stereo"))
    out = args.out or Path("benchmarks/results") / f"cpu-{info['cores']}core-codecs.json"
    out.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
