"""The bridge refiner: a learned, per-frame correction of the mel bridge's output.

The linear bridge (:class:`distill_serve.export.bridge.MelBridge`) estimates each vocoder
frame's spectrum from the decoder's mel by ridge least squares. That estimate is smooth in
frequency where the real spectrum has partials and valleys, so the vocoder mel it yields is off
in a way that depends on the frame's spectral shape (on speech: 0.16 mean absolute log-mel
error, 0.19 PESQ-WB below copy-synthesis). The refiner maps each bridged frame to the vocoder
mel of the same audio: an ensemble of small MLPs on the frame's shape (the frame minus its
mean) and level, added to the frame, their outputs averaged. It is trained on speech by
``python -m distill_serve.export.train_refiner`` and shipped in ``export/assets/``.

Last comes a fixed spectral-contrast postfilter, ``x + strength * (x - smooth(x))`` with a
Gaussian of ``postfilter_width`` bands along the mel axis: it deepens the valleys between
partials and formants that any estimate from the decoder's mel leaves shallow, as a speech
codec's postfilter does. It trades a little log-mel distance for perceived quality; its
strength was chosen by cross-validation on ``data/speech`` (``python -m
benchmarks.refiner_cv``), and 0 turns it off.

It sees one frame at a time (no time context), so streamed blocks and unary requests still
give the same audio. A refiner fits only the decoder mel, vocoder mel and bridge ridge it was
trained on; its file records that pairing and :func:`choose_refiner` uses one only where the
pairing matches.

No ``from __future__ import annotations`` here: torch.jit.script reads :class:`Refiner`'s
annotations at run time.
"""

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import nn

from distill_serve.export.bridge import VocoderMelConfig
from distill_serve.export.checkpoint import SpectrogramConfig

log = logging.getLogger(__name__)

MARKER = "distill-serve-bridge-refiner"
VERSION = 1
SUFFIX = ".refiner"
ASSETS = Path(__file__).resolve().parent / "assets"
#: The frame's mean log-mel above the log clip, divided by this, is the level feature.
LEVEL_SCALE = 5.0


class RefinerError(ValueError):
    """A refiner file that cannot be used; the message says what to do instead."""


@dataclass(frozen=True)
class RefinerConfig:
    """Shape of a :class:`Refiner`: ``members`` MLPs of two ``hidden``-wide GELU layers."""

    num_mels: int
    log_clip: float
    hidden: int = 256
    members: int = 8
    postfilter: float = 0.0
    postfilter_width: float = 2.0


def postfilter_matrix(num_mels: int, strength: float, width: float) -> np.ndarray:
    """``(num_mels, num_mels)`` matrix ``P`` with ``P @ x = x + strength * (x - g * x)``,
    ``g`` a Gaussian of ``width`` bands (edges repeat the end band, as scipy's "nearest")."""
    eye = np.eye(num_mels)
    smooth = gaussian_filter1d(eye, width, axis=0, mode="nearest") if width > 0 else eye
    return (1.0 + strength) * eye - strength * smooth


def _member(config: RefinerConfig) -> nn.Sequential:
    out = nn.Linear(config.hidden, config.num_mels)
    nn.init.zeros_(out.weight)  # a fresh refiner is the identity
    nn.init.zeros_(out.bias)
    return nn.Sequential(
        nn.Linear(config.num_mels + 1, config.hidden),
        nn.GELU(),
        nn.Linear(config.hidden, config.hidden),
        nn.GELU(),
        out,
    )


class Refiner(nn.Module):
    """``(B, num_mels, T)`` vocoder log-mels -> the same, corrected frame by frame."""

    log_clip: float
    level_scale: float
    n_members: int
    postfilter: torch.Tensor

    def __init__(self, config: RefinerConfig) -> None:
        super().__init__()
        self.log_clip = config.log_clip
        self.level_scale = LEVEL_SCALE
        self.n_members = config.members
        self.members = nn.ModuleList([_member(config) for _ in range(config.members)])
        matrix = postfilter_matrix(config.num_mels, config.postfilter, config.postfilter_width)
        self.register_buffer("postfilter", torch.tensor(matrix.T, dtype=torch.float32))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        frames = mel.transpose(1, 2)
        level = frames.mean(dim=-1, keepdim=True)
        features = torch.cat([frames - level, (level - self.log_clip) / self.level_scale], dim=-1)
        correction = torch.zeros_like(frames)
        for member in self.members:
            correction = correction + member(features)
        refined = frames + correction / self.n_members
        return torch.matmul(refined, self.postfilter).transpose(1, 2)


def with_postfilter(trained: Refiner, config: RefinerConfig) -> Refiner:
    """A refiner with ``trained``'s members and ``config``'s postfilter (same shape)."""
    refiner = Refiner(config)
    refiner.members.load_state_dict(trained.members.state_dict())
    return refiner.eval()


def pairing(spec: SpectrogramConfig, mel: VocoderMelConfig, ridge: float) -> dict[str, Any]:
    """What a refiner is valid for: the decoder's mel, the vocoder's mel and the bridge ridge
    (JSON-normalised, so a pairing read from a file compares equal)."""
    normalised: dict[str, Any] = json.loads(
        json.dumps(
            {"decoder_mel": asdict(spec), "vocoder_mel": mel.to_manifest(), "bridge_ridge": ridge}
        )
    )
    return normalised


@dataclass(frozen=True)
class RefinerFile:
    """A refiner as stored: weights, shape, pairing and how it was trained."""

    path: Path
    config: RefinerConfig
    pairing: dict[str, Any]
    training: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    def build(self, postfilter: float | None = None) -> Refiner:
        """The module; ``postfilter`` replaces the stored strength (0: none)."""
        refiner = Refiner(self.config)
        refiner.load_state_dict(self.state_dict)
        if postfilter is None:
            return refiner.eval()
        return with_postfilter(refiner, replace(self.config, postfilter=postfilter))

    def describe(self) -> dict[str, Any]:
        """What the bundle manifest records about it."""
        return {
            "file": self.path.name,
            "members": self.config.members,
            "hidden": self.config.hidden,
            "postfilter": {
                "strength": self.config.postfilter,
                "width_bands": self.config.postfilter_width,
            },
            "parameters": sum(
                t.numel() for k, t in self.state_dict.items() if k.startswith("members.")
            ),
            "training": self.training,
        }


def write_refiner(
    path: Path,
    refiner: Refiner,
    config: RefinerConfig,
    pair: dict[str, Any],
    training: dict[str, Any],
) -> None:
    """Store ``refiner`` (a plain dict of tensors and JSON values: loads with
    ``weights_only=True``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": MARKER,
            "version": VERSION,
            "config": asdict(config),
            "pairing": pair,
            "training": training,
            "state_dict": {k: v.detach().clone() for k, v in refiner.state_dict().items()},
        },
        path,
    )


def read_refiner(path: Path) -> RefinerFile:
    """A refiner file, read safely (``weights_only=True``) and checked."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise RefinerError(f"no refiner file at {path}") from exc
    except Exception as exc:  # torch raises several types for a file that is not its format
        raise RefinerError(
            f"{path} is not a refiner file torch reads with weights_only=True "
            f"({type(exc).__name__}); write one with python -m distill_serve.export.train_refiner"
        ) from exc
    if not isinstance(raw, dict) or raw.get("format") != MARKER:
        raise RefinerError(f"{path} is not a bridge refiner (no {MARKER!r} marker)")
    if raw.get("version") != VERSION:
        raise RefinerError(
            f"{path} is refiner format {raw.get('version')}; this distill-serve reads {VERSION}"
        )
    return RefinerFile(
        path=Path(path),
        config=RefinerConfig(**raw["config"]),
        pairing=raw["pairing"],
        training=raw["training"],
        state_dict=raw["state_dict"],
    )


def packaged_refiners() -> list[Path]:
    """The refiners shipped with distill-serve (``export/assets/*.refiner``)."""
    return sorted(ASSETS.glob(f"*{SUFFIX}"))


def choose_refiner(
    choice: str, spec: SpectrogramConfig, mel: VocoderMelConfig, ridge: float
) -> RefinerFile | None:
    """The refiner an export uses.

    ``choice`` is "auto" (a packaged refiner whose pairing matches, else none), "none", or the
    path of a refiner file, which must match.
    """
    if choice == "none":
        return None
    wanted = pairing(spec, mel, ridge)
    if choice == "auto":
        for path in packaged_refiners():
            found = read_refiner(path)
            if found.pairing == wanted:
                return found
        log.info("no packaged bridge refiner for this decoder/vocoder mel pair: bridge is linear")
        return None
    found = read_refiner(Path(choice))
    if found.pairing != wanted:
        raise RefinerError(
            f"{choice} was trained for another mel pairing "
            f"({_differences(found.pairing, wanted)}); "
            "train one for this vocoder with python -m distill_serve.export.train_refiner "
            "--vocoder ..., or export with --refiner none"
        )
    return found


def _differences(have: dict[str, Any], want: dict[str, Any]) -> str:
    diffs = []
    for section in sorted(set(have) | set(want)):
        a, b = have.get(section), want.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [
                f"{section}.{k}: {a.get(k)!r} here, {b.get(k)!r} wanted"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        elif a != b:
            diffs.append(f"{section}: {a!r} here, {b!r} wanted")
    return "; ".join(diffs)
