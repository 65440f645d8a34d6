"""``python -m benchmarks.int8_isa``: the int8 vocoder's SNR against fp32 on each int8 kernel
family, and its speed here, for full-range and 7-bit (``reduce_range``) weights side by side.

onnxruntime picks its u8 x s8 kernels from cpuid (``distill_serve/isa.py``): AVX512-VNNI sums
products exactly, AVX2 and AVX512BW add pairs of them in 16 bits and saturate. To measure the
AVX2 side on an AVX-512 machine, the same evaluation runs a second time under
``qemu-x86_64 -cpu EPYC-Milan`` (Zen 3: AVX2 + FMA, no AVX-512; Debian's ``qemu-user``), where
numpy and onnxruntime see no AVX-512 and MLAS takes its AVX2 kernels. Emulated timings mean
nothing; only the SNRs are kept from that run.

The quantized graphs are made here the way ``export --int8`` makes them (its calibration:
16-frame chunks of the bundle's own bridged mels, plus a random mel and silence), from the
stand-in bundle's fp32 vocoder; the fp32 reference is computed natively.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks.__main__ import stand_in_bundle, write_result

#: name -> quantize_vocoder's options
VARIANTS: dict[str, dict[str, Any]] = {
    "u8s8_full_range": {"reduce_range": False},
    "u8s8_reduce_range": {"reduce_range": True},
}
EMULATED_CPU = "EPYC-Milan"


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(session: Any, mel: np.ndarray) -> np.ndarray:
    return np.asarray(session.run(None, {session.get_inputs()[0].name: mel})[0])


def _bridged_mels(bundle: Path, seconds: float, seeds: list[int]) -> list[np.ndarray]:
    from distill_serve.audio import Encoding
    from distill_serve.server.engine.engine import Engine, EngineConfig
    from distill_serve.server.pipeline.generate import vocoder_mel
    from distill_serve.server.pipeline.request import (
        ChunkMode,
        Limits,
        RawRequest,
        Spatial,
        validate,
    )
    from distill_serve.server.pipeline.runner import PipelineStats

    engine = Engine.from_dir(bundle, EngineConfig(use_cuda=False))
    out = []
    for seed in seeds:
        raw = RawRequest(
            mode=ChunkMode.CROSSFADE,
            duration_s=seconds,
            seed=seed,
            sample_rate=0,
            encoding=Encoding.FLOAT32,
            spatial=Spatial.MONO,
        )
        p = validate(raw, engine.model, Limits(), fallback_seed=seed)
        out.append(vocoder_mel(engine.runner(), engine.model, p, seed, PipelineStats())[None])
    return out


def prepare(bundle: Path, work: Path) -> dict[str, Any]:
    """Quantize every variant into ``work`` and write the evaluation cases with their fp32
    outputs (``cases.npz``)."""
    from distill_serve.export.quantize import quantize_vocoder

    fp32 = bundle / "vocoder.onnx"
    calib_mel, test_mel = _bridged_mels(bundle, 6.0, [11, 12])
    n_mels = calib_mel.shape[1]
    rng = np.random.default_rng(0)
    calibration = [calib_mel[:, :, i : i + 16] for i in range(0, calib_mel.shape[2] - 15, 80)]
    calibration.append((rng.standard_normal((1, n_mels, 16)) * 2 - 4).astype(np.float32))
    calibration.append(np.full((1, n_mels, 8), np.log(1e-5), np.float32))
    reports = {}
    for name, options in VARIANTS.items():
        reports[name] = quantize_vocoder(fp32, work / f"{name}.onnx", calibration, **options)
    cases = {
        "bridged_3s": test_mel[:, :, :260],
        "random_430frames": (rng.standard_normal((1, n_mels, 430)) * 2 - 4).astype(np.float32),
    }
    reference = _session(fp32)
    arrays = {f"mel:{k}": v for k, v in cases.items()}
    arrays |= {f"ref:{k}": _run(reference, v) for k, v in cases.items()}
    np.savez(work / "cases.npz", **arrays)
    return {name: r.to_dict() for name, r in reports.items()}


def evaluate(work: Path, timing: bool) -> dict[str, Any]:
    """SNR of every variant in ``work`` against the fp32 outputs, on this CPU (and its speed
    per audio second on the longest case, against fp32, when ``timing``)."""
    from distill_serve.export.parity import snr_db
    from distill_serve.isa import cpu_kind

    data = np.load(work / "cases.npz")
    names = sorted(k.split(":", 1)[1] for k in data.files if k.startswith("mel:"))
    out: dict[str, Any] = {"cpu": cpu_kind().to_dict(), "variants": {}}
    for variant in VARIANTS:
        session = _session(work / f"{variant}.onnx")
        snrs = {
            n: round(snr_db(data[f"ref:{n}"], _run(session, data[f"mel:{n}"])), 2) for n in names
        }
        out["variants"][variant] = {"snr_db": snrs, "min_snr_db": min(snrs.values())}
    if timing:
        mel = data["mel:random_430frames"]
        out["seconds_per_run"] = {
            name: _median_time(_session(path), mel)
            for name, path in [("fp32", work / "fp32.onnx")]
            + [(v, work / f"{v}.onnx") for v in VARIANTS]
        }
    return out


def _median_time(session: Any, mel: np.ndarray, repeats: int = 5) -> float:
    _run(session, mel)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _run(session, mel)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)), 4)


def _emulated(work: Path, cpu: str) -> dict[str, Any] | None:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        print("qemu-x86_64 not found (apt-get install qemu-user): no emulated run", file=sys.stderr)
        return None
    proc = subprocess.run(
        [qemu, "-cpu", cpu, sys.executable, "-m", "benchmarks.int8_isa", "--eval", str(work)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle dir (default: the stand-in)")
    parser.add_argument("--emulate", default=EMULATED_CPU, help="qemu CPU model ('' to skip)")
    parser.add_argument("--eval", type=Path, help=argparse.SUPPRESS)  # the emulated child
    parser.add_argument("--out", type=Path, help="JSON result path")
    args = parser.parse_args(argv)
    if args.eval is not None:
        print(json.dumps(evaluate(args.eval, timing=False)))
        return 0
    bundle = args.bundle or stand_in_bundle()
    with tempfile.TemporaryDirectory(prefix="int8-isa-") as tmp:
        work = Path(tmp)
        shutil.copy(bundle / "vocoder.onnx", work / "fp32.onnx")
        reports = prepare(bundle, work)
        runs = [evaluate(work, timing=True)]
        if args.emulate and (emulated := _emulated(work, args.emulate)) is not None:
            emulated["emulated_cpu_model"] = args.emulate
            runs.append(emulated)
    speed = runs[0]["seconds_per_run"]
    print(f"int8 vocoder vs fp32 ({bundle.name}); host {machine.cpu_model()}")
    print(f"{'variant':>20}  " + "  ".join(f"{r['cpu']['int8_kernels']:>12}" for r in runs)
          + "  speed vs fp32 (native)")  # fmt: skip
    for variant in VARIANTS:
        snrs = "  ".join(f"{r['variants'][variant]['min_snr_db']:>9.1f} dB" for r in runs)
        print(f"{variant:>20}  {snrs}  {speed['fp32'] / speed[variant]:.2f}x")
    result = {"machine": machine.describe(peak=False), "quantize": reports, "runs": runs}
    write_result(result, args.out, "int8-isa")
    return 0


if __name__ == "__main__":
    sys.exit(main())
