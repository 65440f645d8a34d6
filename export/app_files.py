"""Model files written the way the Distill app writes them, for tests and benchmarks
(``shared/DISTILL.md``): the app's keys (encoder and decoder weights, ``latent_analysis``,
``training_config`` with its pickled ``OverfittingPreset`` enum under the app's qualified
name, ``metadata``) and, optionally, a per-model HiFi-GAN V2 ``vocoder_state`` whose generator
weights keep their weight norm (``weight_g`` / ``weight_v``) as the app's ``state_dict()``
does. Random weights; nothing here is read back by the exporter except through the file.
"""

from __future__ import annotations

import contextlib
import enum
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill_serve.export.bundled_vocoder import generator_config
from distill_serve.export.demo import demo_checkpoint_dict
from distill_serve.export.distill_file import FORMATS
from distill_serve.export.hifigan import HiFiGANGenerator

#: The per-model vocoder's config as the app stores it (``HiFiGANConfig``, v1.1 defaults).
APP_VOCODER_CONFIG: dict[str, Any] = {
    "resblock_type": 1,
    "upsample_rates": [8, 8, 4, 2],
    "upsample_kernel_sizes": [16, 16, 8, 4],
    "upsample_initial_channel": 128,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "num_mels": 128,
    "sample_rate": 48_000,
    "hop_size": 512,
    "learning_rate": 0.0002,
    "adam_b1": 0.8,
    "adam_b2": 0.99,
    "lr_decay": 0.999,
    "segment_size": 24_576,
    "batch_size": 8,
    "mpd_periods": [2, 3, 5, 7, 11],
}
#: The app's V2 layout with fewer channels, for tests (the full one is the benchmark's): the
#: same rates, kernels, resblocks and mel count, so the same shapes of mistakes.
SMALL_V2 = {**APP_VOCODER_CONFIG, "upsample_initial_channel": 32}
#: The package each release's enum lives in.
ENUM_MODULES = {
    "distillgan_model": "distill.training.config",
    "distill_model": "distill.training.config",
    "sda_model": "small_dataset_audio.training.config",
}


@contextlib.contextmanager
def _app_enum(module: str) -> Iterator[type[enum.Enum]]:
    """The app's ``OverfittingPreset`` under its qualified name, importable while a file is
    saved (pickle records the class by module and name), and gone again after."""
    preset = enum.Enum(  # type: ignore[misc]
        "OverfittingPreset",
        {"CONSERVATIVE": "conservative", "BALANCED": "balanced", "AGGRESSIVE": "aggressive"},
        module=module,
    )
    parts = module.split(".")
    added = []
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
    sys.modules[module].__dict__["OverfittingPreset"] = preset
    try:
        yield preset
    finally:
        for name in added:
            del sys.modules[name]


def _encoder_state(latent_dim: int, flatten: int, seed: int) -> dict[str, torch.Tensor]:
    """The app's ``ConvEncoder`` weights (4 x Conv2d + BatchNorm2d, fc_mu, fc_logvar)."""
    torch.manual_seed(seed + 1)
    state: dict[str, torch.Tensor] = {}
    for i, (cin, cout) in enumerate(((1, 32), (32, 64), (64, 128), (128, 256))):
        conv, norm = nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout)
        for key, value in conv.state_dict().items():
            state[f"encoder.convs.{4 * i}.{key}"] = value
        for key, value in norm.state_dict().items():
            state[f"encoder.convs.{4 * i + 1}.{key}"] = value
    for head in ("fc_mu", "fc_logvar"):
        for key, value in nn.Linear(flatten, latent_dim).state_dict().items():
            state[f"encoder.{head}.{key}"] = value
    return state


def app_vocoder_state(
    config: dict[str, Any] | None = None, seed: int = 0, epochs: int = 50, partial: bool = False
) -> dict[str, Any]:
    """A ``vocoder_state`` as the app's trainer stores it: ``generator_state_dict`` with weight
    norm (``weight_g`` / ``weight_v``), ``config``, ``training_metadata`` and, for a training
    that was cancelled (``partial``), its ``checkpoint``."""
    config = dict(APP_VOCODER_CONFIG if config is None else config)
    torch.manual_seed(seed)
    generator = HiFiGANGenerator(generator_config(config))
    with warnings.catch_warnings():  # the app's old-style weight norm (weight_g, weight_v)
        warnings.simplefilter("ignore", FutureWarning)
        for module in generator.modules():
            if isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
                nn.utils.weight_norm(module)
    state: dict[str, Any] = {
        "type": "hifigan_v2",
        "generator_state_dict": {k: v.detach().clone() for k, v in generator.state_dict().items()},
        "config": config,
        "training_metadata": {
            "epochs": epochs,
            "total_epochs": max(epochs, 200),
            "final_loss": 12.5,
            "training_date": "2026-03-01T12:00:00+00:00",
        },
    }
    if partial:
        state["checkpoint"] = {"optimizer_g": {"state": {}, "param_groups": []}, "epoch": epochs}
    return state


def app_model_dict(
    marker: str = "distillgan_model",
    seed: int = 1,
    analysis: bool = True,
    vocoder_state: dict[str, Any] | None = None,
    latent_dim: int = 64,
) -> dict[str, Any]:
    """The dict a Distill release saves (without the enum: :func:`write_app_model` adds it)."""
    if marker not in FORMATS:
        raise ValueError(f"marker must be one of {sorted(FORMATS)}, got {marker!r}")
    demo = demo_checkpoint_dict(seed, latent_dim)
    state = {**_encoder_state(latent_dim, 256 * 8 * 6, seed), **demo["model_state_dict"]}
    latent_analysis = None
    if analysis:
        a = demo["latent_analysis"]
        n = int(a["n_active_components"])
        latent_analysis = {
            "version": 1,
            **{k: v for k, v in a.items() if k != "explained_variance"},
            "explained_variance_ratio": a["explained_variance"],
            "suggested_labels": list(a["component_labels"]),
            "feature_correlations": {"spectral_centroid": np.zeros(n, np.float32)},
            "latent_dim": latent_dim,
        }
    saved: dict[str, Any] = {
        "format": marker,
        "version": 1,
        "model_state_dict": state,
        "latent_dim": latent_dim,
        "spectrogram_config": {**demo["spectrogram_config"], "f_max": None},
        "latent_analysis": latent_analysis,
        "training_config": {},  # filled by write_app_model (it holds the enum)
        "metadata": {
            "model_id": "7d3f6a0e-2c1b-4c55-9a7e-3f1f0f8e9b21",
            "name": "Rain on Tin",
            "description": "Field recordings of rain on a tin roof",
            "dataset_name": "rain-tin",
            "dataset_file_count": 23,
            "dataset_total_duration_s": 412.5,
            "training_date": "2026-02-28T10:00:00+00:00",
            "save_date": "2026-02-28T12:00:00+00:00",
            "training_epochs": 200,
            "final_train_loss": 0.0123,
            "final_val_loss": 0.0145,
            "tags": ["rain", "texture"],
            "has_analysis": analysis,
            "n_active_components": 8 if analysis else 0,
        },
    }
    if vocoder_state is not None:
        saved["vocoder_state"] = vocoder_state
    return saved


def write_app_model(path: Path, saved: dict[str, Any]) -> Path:
    """``torch.save`` ``saved`` as the app does: its ``training_config`` is the app's
    ``asdict(TrainingConfig)``, whose ``preset`` is the app's enum (pickled by qualified name)."""
    with _app_enum(ENUM_MODULES.get(saved["format"], "distill.training.config")) as preset:
        training = {
            "latent_dim": saved["latent_dim"],
            "batch_size": 32,
            "max_epochs": 200,
            "learning_rate": 1e-3,
            "kl_warmup_fraction": 0.3,
            "kl_weight_max": 0.01,
            "free_bits": 0.1,
            "val_fraction": 0.2,
            "chunk_duration_s": 1.0,
            "checkpoint_interval": 10,
            "preview_interval": 20,
            "preview_interval_short": 2,
            "max_checkpoints": 3,
            "preset": preset("balanced"),
            "regularization": {
                "dropout": 0.2,
                "weight_decay": 0.01,
                "augmentation_expansion": 10,
                "gradient_clip_norm": 1.0,
            },
            "device": "auto",
            "num_workers": 0,
        }
        torch.save({**saved, "training_config": training}, path)
    return path


__all__ = [
    "APP_VOCODER_CONFIG",
    "SMALL_V2",
    "app_model_dict",
    "app_vocoder_state",
    "write_app_model",
]
