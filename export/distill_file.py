"""Reading the model files the Distill app writes (``shared/DISTILL.md`` section 1), safely.

Every released file is one ``torch.save`` dict marked by its ``format``:

=====================  =============  =====================================================
marker                 extension      written by
=====================  =============  =====================================================
``distillgan_model``   ``.distillgan``  Distill v1.1 (may carry its own ``vocoder_state``)
``distill_model``      ``.distill``     Distill v1.0
``sda_model``          ``.sda``         the v1.0 MVP (package ``small_dataset_audio``)
=====================  =============  =====================================================

The files are read with ``torch.load(weights_only=True)``: tensors, numpy arrays and plain
values, plus the one class the app pickles, its ``OverfittingPreset`` enum (in
``training_config["preset"]``), allowed under the app's qualified names and read as the
stand-in below. Anything else in the pickle is refused with its name; nothing is ever
unpickled unsafely. Two formats from unreleased branches of the app are refused with what
they are.
"""

from __future__ import annotations

import enum
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SUPPORTED_VERSION = 1


@dataclass(frozen=True)
class DistillFormat:
    marker: str
    extension: str
    release: str


FORMATS = {
    f.marker: f
    for f in (
        DistillFormat("distillgan_model", ".distillgan", "Distill v1.1"),
        DistillFormat("distill_model", ".distill", "Distill v1.0"),
        DistillFormat("sda_model", ".sda", "the Distill v1.0 MVP (small_dataset_audio)"),
    )
}


class CheckpointError(ValueError):
    """A model file that cannot be exported; the message says what is wrong and what to do."""


class OverfittingPreset(enum.Enum):
    """Stand-in for the app's ``distill.training.config.OverfittingPreset`` (and the MVP's
    ``small_dataset_audio.training.config.OverfittingPreset``): the training preset a model
    file records. Read, never used."""

    CONSERVATIVE = "conservative"
    BALANCED = "balanced"
    AGGRESSIVE = "aggressive"


#: The app's classes a model file may pickle, by qualified name, and what they load as.
APP_CLASSES: dict[str, type] = {
    "distill.training.config.OverfittingPreset": OverfittingPreset,
    "small_dataset_audio.training.config.OverfittingPreset": OverfittingPreset,
}
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


def _numpy_safe_globals() -> list[Any]:
    """numpy's pickle helpers that plain arrays need, allow-listed for weights_only loading."""
    from numpy._core import multiarray  # numpy >= 2

    globals_: list[Any] = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    for dt in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_, np.str_):
        globals_.append(type(np.dtype(dt)))
    return globals_


def _safe_globals() -> list[Any]:
    return [*_numpy_safe_globals(), *((cls, name) for name, cls in APP_CLASSES.items())]


def _refusal(path: Path, exc: pickle.UnpicklingError) -> CheckpointError:
    """One line in the user's terms for a pickle ``weights_only`` refused."""
    text = _ESCAPES.sub("", str(exc))
    found = _GLOBAL.search(text)
    what = f"it pickles {found.group(1)}" if found else "it holds objects"
    return CheckpointError(
        f"{path}: refused to read: {what}, which is not plain data (a Distill model file holds "
        "tensors, numpy arrays, numbers, strings, lists, dicts and the app's training preset); "
        "nothing was unpickled. Export the model from the Distill app again, or re-save it "
        "with plain data only."
    )


def read_file(path: Path) -> dict[str, Any]:
    """The file's dict, read safely (raises :class:`CheckpointError`)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = _ESCAPES.sub("", str(exc)).strip().splitlines()[:1]
        raise CheckpointError(
            f"{path}: not a readable model file (truncated or corrupt?): "
            f"{first[0] if first else type(exc).__name__}"
        ) from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(raw).__name__}")
    return raw


def check_format(raw: dict[str, Any], path: Path) -> DistillFormat:
    """The file's format, or a refusal that says what the file is."""
    marker, version = raw.get("format"), raw.get("version")
    if raw.get("model_type") == "vqvae":
        raise CheckpointError(
            f"{path}: a VQ-VAE model (format {marker!r} version {version!r}, model_type 'vqvae') "
            "from the unreleased feature/vq-vae branch of Distill; distill-serve exports the "
            "released app's convolutional VAE models (.distillgan, .distill, .sda)"
        )
    if "normalization_stats" in raw:
        raise CheckpointError(
            f"{path}: a complex-spectrogram model (magnitude + phase VAE with "
            "normalization_stats) from the unreleased feature/complex-spectrogram branch of "
            "Distill; distill-serve exports the released app's log-mel models (.distillgan, "
            ".distill, .sda)"
        )
    found = FORMATS.get(marker) if isinstance(marker, str) else None
    if found is None:
        known = ", ".join(f"{f.marker!r} ({f.extension})" for f in FORMATS.values())
        raise CheckpointError(
            f"{path}: format marker is {marker!r}, expected one of {known}; is this a Distill "
            "model file?"
        )
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: version {version!r} is not a positive integer")
    if version > SUPPORTED_VERSION:
        raise CheckpointError(
            f"{path}: {found.extension} version {version} is newer than this exporter supports "
            f"({SUPPORTED_VERSION}); upgrade distill-serve"
        )
    return found
