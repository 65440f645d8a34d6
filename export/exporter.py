"""``distill-serve export``: checkpoint + vocoder -> verified, hashed bundle directory.

:func:`export_bundle` loads the inputs, runs the stages (``stages.py``) over one shared
:class:`~distill_serve.export.run.ExportRun`, and writes the manifest (``manifest.py``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from distill_serve.bundle import write_manifest
from distill_serve.export import stages
from distill_serve.export.bridge import default_ridge
from distill_serve.export.bundled_vocoder import choose_vocoder
from distill_serve.export.checkpoint import load_checkpoint
from distill_serve.export.config import DEFAULT_RATES, ExportConfig, ExportError
from distill_serve.export.manifest import build_manifest
from distill_serve.export.refiner import choose_refiner
from distill_serve.export.run import ExportRun, Progress
from distill_serve.geometry import FrameGeometry
from distill_serve.isa import cpu_kind

__all__ = ["DEFAULT_RATES", "ExportConfig", "ExportError", "export_bundle"]


def export_bundle(config: ExportConfig) -> dict[str, Any]:
    """Export every graph, check parity, hash the files and write ``manifest.json``.

    Returns:
        The manifest that was written.

    Raises:
        CheckpointError, VocoderError: bad inputs (see their messages).
        ExportError: a graph missed its parity threshold; the bundle is not usable.
    """
    started = time.perf_counter()
    ckpt = load_checkpoint(config.checkpoint)
    vocoder, chosen = choose_vocoder(config.vocoder, ckpt)
    vmel = vocoder.mel
    if vmel.decoder_mel and config.refiner not in ("auto", "none"):
        raise ExportError(
            "--refiner corrects the bridge's mapping into a vocoder's mel; this vocoder takes "
            "the decoder's own mel (no bridge): leave --refiner out"
        )
    ridge = default_ridge(ckpt.spectrogram, vmel)
    refiner = (
        None if vmel.decoder_mel else choose_refiner(config.refiner, ckpt.spectrogram, vmel, ridge)
    )
    config.out.mkdir(parents=True, exist_ok=True)  # the inputs are checked: now write
    geometry = FrameGeometry(
        ckpt.spectrogram.sample_rate,
        ckpt.spectrogram.hop_length,
        vmel.sample_rate,
        vmel.hop_size,
        vmel.frame_centre,
    )
    rates = tuple(sorted(set(config.rates)))
    resample_rates = [r for r in rates if r != vmel.sample_rate]
    graphs = 3 + len(resample_rates)
    steps = graphs * (2 if config.format in ("torchscript", "both") else 1) + 1
    steps += int(config.int8) + int(config.fp16) + int(config.stream)
    run = ExportRun(config, Progress(steps, config.progress), np.random.default_rng(config.seed))
    stream, stream_failures, int8, fp16 = None, [], None, None
    try:
        dec_mel = stages.decoder(run, ckpt)
        bridged = stages.bridge(run, ckpt, vocoder, geometry, ridge, refiner, dec_mel)
        parts = stages.vocoder_graph(run, vocoder, bridged)
        if config.stream:
            stream, stream_failures = stages.vocoder_stream(run, vocoder, parts)
        parts.graph_module = None  # free the rewritten copy (~0.5 GB for the full BigVGAN)
        if config.int8:
            int8 = stages.vocoder_int8(run, parts)
        if config.fp16:
            fp16 = stages.vocoder_fp16(run, parts)
        resamplers = stages.resamplers(run, vmel.sample_rate, resample_rates)
        run.progress.step("measure vocoder receptive field")
        reach = stages.measure_receptive_field(vocoder.model, vmel.num_mels, vmel.hop_size)
        run.progress.done()
    finally:
        run.progress.close()

    failed = [r for r in run.parity.values() if not r.passed] + stream_failures
    manifest = build_manifest(
        config, ckpt, vocoder, geometry, rates, resamplers, reach, run.files, run.parity, ridge,
        refiner,
    )  # fmt: skip
    voc = manifest["vocoder"]
    voc["chosen"] = chosen
    voc["graph_rewrites"] = {"polyphase_activations": parts.rewritten}
    voc["int8"] = int8.to_dict() if int8 else None
    voc["stream"] = stream
    if int8:  # int8 results depend on the CPU's integer kernels (distill_serve/isa.py)
        manifest["parity"]["vocoder.int8.onnx"]["measured_on"] = cpu_kind().to_dict()
    voc["fp16"] = fp16.to_dict() if fp16 else None
    manifest["export_seconds"] = round(time.perf_counter() - started, 1)
    manifest["graph_export_seconds"] = run.timings
    write_manifest(config.out, manifest)
    if failed:
        lines = ", ".join(
            f"{r.graph} (worst {r.worst().name}: {r.worst().snr_db:.1f} dB, max abs "
            f"{r.worst().max_abs:.2e}; needs {r.threshold.min_snr_db} dB)"
            for r in failed
        )
        raise ExportError(f"parity check failed for {lines}; see {config.out / 'manifest.json'}")
    return manifest
