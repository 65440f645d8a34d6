"""Validation of Distill model files (``.distillgan``, ``.distill``, ``.sda``; DESIGN section
1, ``shared/DISTILL.md``): the decoder, its mel space, sliders and metadata. Reading the file
safely and recognising its format is ``distill_file.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill_serve.export.decoder import DistillDecoder, decoder_key_shapes
from distill_serve.export.distill_file import (
    FORMATS,
    SUPPORTED_VERSION,
    CheckpointError,
    DistillFormat,
    check_format,
    read_file,
)

__all__ = ["FORMAT_MARKER", "SUPPORTED_VERSION", "CheckpointError", "DistillCheckpoint"]

#: The demo's files are v1.0 ``.distill`` files.
FORMAT_MARKER = "distill_model"
REQUIRED_SPEC_KEYS = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "power")


@dataclass(frozen=True)
class SpectrogramConfig:
    """The decoder's mel space (torchaudio MelSpectrogram, HTK scale, log1p)."""

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    power: float

    @classmethod
    def from_mapping(cls, d: dict[str, Any]) -> SpectrogramConfig:
        """From a checkpoint's ``spectrogram_config`` or a manifest's ``decoder_mel`` (extra
        keys ignored)."""
        return cls(
            sample_rate=int(d["sample_rate"]),
            n_fft=int(d["n_fft"]),
            hop_length=int(d["hop_length"]),
            n_mels=int(d["n_mels"]),
            f_min=float(d["f_min"]),
            f_max=float(d["f_max"]),
            power=float(d["power"]),
        )

    def frames_for(self, n_samples: int) -> int:
        """Frames torchaudio (center=True) gives for ``n_samples`` samples."""
        return n_samples // self.hop_length + 1


@dataclass(frozen=True)
class SliderAnalysis:
    """PCA sliders: ``z = pca_mean + sum_i position_i * step_size_i * pca_components_i``."""

    pca_components: np.ndarray  # (n, latent_dim)
    pca_mean: np.ndarray  # (latent_dim,)
    n_active_components: int
    step_size: np.ndarray  # (n_active,)
    n_steps: int
    labels: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        n = self.n_active_components
        return {
            "pca_components": self.pca_components[:n].astype(np.float64).tolist(),
            "pca_mean": self.pca_mean.astype(np.float64).tolist(),
            "n_active_components": n,
            "step_size": self.step_size[:n].astype(np.float64).tolist(),
            "n_steps": self.n_steps,
            "component_labels": self.labels[:n],
            **self.extra,
        }


@dataclass
class DistillCheckpoint:
    """A validated checkpoint: the decoder weights and what the bundle needs to describe them."""

    path: Path
    version: int
    latent_dim: int
    height: int
    width: int
    chunk_duration_s: float
    spectrogram: SpectrogramConfig
    decoder_state: dict[str, torch.Tensor]
    sliders: SliderAnalysis | None
    training_config: dict[str, Any]
    metadata: dict[str, Any]
    format: DistillFormat = FORMATS[FORMAT_MARKER]
    #: the app's per-model vocoder (``shared/DISTILL.md`` section 2), as stored; None: none
    vocoder_state: dict[str, Any] | None = None

    @property
    def chunk_frames(self) -> int:
        return self.spectrogram.frames_for(
            round(self.chunk_duration_s * self.spectrogram.sample_rate)
        )

    def build_decoder(self) -> DistillDecoder:
        """The decoder in eval mode with the checkpoint's weights."""
        decoder = DistillDecoder(
            self.latent_dim, self.height, self.width, self.spectrogram.n_mels, self.chunk_frames
        )
        state = {k.removeprefix("decoder."): v for k, v in self.decoder_state.items()}
        decoder.load_state_dict(state, strict=False)
        return decoder.eval()


def _as_numpy(value: Any, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"latent_analysis.{what} is not numeric: {exc}") from exc


def _spectrogram(raw: dict[str, Any], path: Path) -> SpectrogramConfig:
    spec = raw.get("spectrogram_config")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{path}: missing spectrogram_config")
    missing = [k for k in REQUIRED_SPEC_KEYS if k not in spec]
    if missing:
        raise CheckpointError(f"{path}: spectrogram_config lacks {', '.join(missing)}")
    f_max = spec["f_max"] if spec["f_max"] is not None else spec["sample_rate"] / 2
    return SpectrogramConfig.from_mapping({**spec, "f_max": f_max})


def _sliders(raw: dict[str, Any], latent_dim: int, path: Path) -> SliderAnalysis | None:
    analysis = raw.get("latent_analysis")
    if analysis is None:
        return None
    if not isinstance(analysis, dict):
        raise CheckpointError(f"{path}: latent_analysis must be a dict or None")
    for key in ("pca_components", "pca_mean", "n_active_components", "step_size", "n_steps"):
        if key not in analysis:
            raise CheckpointError(f"{path}: latent_analysis lacks {key}")
    comps = _as_numpy(analysis["pca_components"], "pca_components")
    mean = _as_numpy(analysis["pca_mean"], "pca_mean")
    n_active = int(analysis["n_active_components"])
    step = np.broadcast_to(_as_numpy(analysis["step_size"], "step_size"), (n_active,))
    if comps.ndim != 2 or comps.shape[1] != latent_dim or comps.shape[0] < n_active:
        raise CheckpointError(
            f"{path}: latent_analysis.pca_components has shape {comps.shape}, "
            f"expected (>= {n_active}, {latent_dim})"
        )
    if mean.shape != (latent_dim,):
        raise CheckpointError(f"{path}: latent_analysis.pca_mean has shape {mean.shape}")
    labels = [str(x) for x in analysis.get("component_labels", [])]
    labels += [f"PC{i + 1}" for i in range(len(labels), n_active)]
    extra = {}
    for key in ("safe_min", "safe_max", "warning_min", "warning_max"):
        if key in analysis:
            extra[key] = np.asarray(_as_numpy(analysis[key], key)).tolist()
    return SliderAnalysis(
        comps, mean, n_active, np.array(step), int(analysis["n_steps"]), labels, extra
    )


def load_checkpoint(path: str | Path) -> DistillCheckpoint:
    """Load and validate a Distill model file (``torch.load(weights_only=True)`` with the
    app's one pickled enum allowed: ``distill_file.py``).

    Raises:
        CheckpointError: an unknown format marker or an unreleased branch's format, a newer
            version, missing or mis-shaped decoder keys, a truncated file, or a pickle that
            holds more than plain data.
    """
    path = Path(path)
    raw = read_file(path)
    found = check_format(raw, path)
    version = int(raw["version"])
    state = raw.get("model_state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: missing model_state_dict")
    latent_dim = int(raw.get("latent_dim", 0))
    spec = _spectrogram(raw, path)
    fc = state.get("decoder.fc.weight")
    if not isinstance(fc, torch.Tensor) or fc.ndim != 2:
        raise CheckpointError(f"{path}: model_state_dict lacks decoder.fc.weight")
    if latent_dim <= 0 or fc.shape[1] != latent_dim:
        raise CheckpointError(
            f"{path}: decoder.fc.weight has shape {tuple(fc.shape)} but latent_dim is {latent_dim}"
        )
    height = math.ceil(spec.n_mels / 16)
    if fc.shape[0] % (256 * height):
        raise CheckpointError(
            f"{path}: decoder.fc.weight has {fc.shape[0]} rows, not a multiple of 256*{height}"
        )
    width = fc.shape[0] // (256 * height)
    expected = decoder_key_shapes(latent_dim, height, width)
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{path}: model_state_dict lacks decoder keys {missing}")
    bad = [
        f"{k} {tuple(state[k].shape)} != {shape}"
        for k, shape in expected.items()
        if tuple(state[k].shape) != shape
    ]
    if bad:
        raise CheckpointError(f"{path}: mis-shaped decoder weights: {'; '.join(bad)}")
    training = raw.get("training_config") or {}
    chunk_s = float(training.get("chunk_duration_s", 1.0)) if isinstance(training, dict) else 1.0
    ckpt = DistillCheckpoint(
        path=path,
        version=version,
        latent_dim=latent_dim,
        height=height,
        width=width,
        chunk_duration_s=chunk_s,
        spectrogram=spec,
        decoder_state={k: v for k, v in state.items() if k.startswith("decoder.")},
        sliders=_sliders(raw, latent_dim, path),
        training_config=training if isinstance(training, dict) else {},
        metadata=raw.get("metadata") or {},
        format=found,
        vocoder_state=raw.get("vocoder_state"),
    )
    if ckpt.chunk_frames > 16 * width:
        raise CheckpointError(
            f"{path}: chunk of {chunk_s} s is {ckpt.chunk_frames} frames, more than the "
            f"decoder's {16 * width}"
        )
    return ckpt
