"""The mel bridge: decoder mels (48 kHz, HTK, power, log1p) -> BigVGAN mels (44.1 kHz,
Slaney, magnitude, log-clamp) on BigVGAN's frame grid (DESIGN section 3).

No ``from __future__ import annotations`` here: torch.jit.script reads the buffer
annotations of :class:`MelBridge` at run time.
"""

from dataclasses import dataclass
from typing import Any

import librosa
import numpy as np
import torch
import torchaudio
from torch import nn

from distill_serve.export.checkpoint import SpectrogramConfig


@dataclass(frozen=True)
class VocoderMelConfig:
    """BigVGAN's mel space, read from its config.json."""

    sample_rate: int
    n_fft: int
    hop_size: int
    win_size: int
    num_mels: int
    fmin: float
    fmax: float | None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "VocoderMelConfig":
        return cls(
            sample_rate=int(config["sampling_rate"]),
            n_fft=int(config["n_fft"]),
            hop_size=int(config["hop_size"]),
            win_size=int(config["win_size"]),
            num_mels=int(config["num_mels"]),
            fmin=float(config["fmin"]),
            fmax=None if config.get("fmax") is None else float(config["fmax"]),
        )


def htk_filterbank(spec: SpectrogramConfig) -> np.ndarray:
    """The decoder's HTK mel filterbank (torchaudio's), shape (n_mels, n_fft // 2 + 1)."""
    fb = torchaudio.functional.melscale_fbanks(
        n_freqs=spec.n_fft // 2 + 1,
        f_min=spec.f_min,
        f_max=spec.f_max,
        n_mels=spec.n_mels,
        sample_rate=spec.sample_rate,
        norm=None,
        mel_scale="htk",
    )
    return fb.T.numpy().astype(np.float64)


def slaney_filterbank(mel: VocoderMelConfig) -> np.ndarray:
    """BigVGAN's Slaney mel filterbank (librosa's), shape (num_mels, n_fft // 2 + 1)."""
    return librosa.filters.mel(
        sr=mel.sample_rate, n_fft=mel.n_fft, n_mels=mel.num_mels, fmin=mel.fmin, fmax=mel.fmax
    ).astype(np.float64)


def frequency_map(spec: SpectrogramConfig, mel: VocoderMelConfig) -> np.ndarray:
    """Linear interpolation from decoder STFT bins to vocoder STFT bins, (F_voc, F_dec)."""
    f_voc = np.arange(mel.n_fft // 2 + 1) * mel.sample_rate / mel.n_fft
    pos = f_voc * spec.n_fft / spec.sample_rate
    n_dec = spec.n_fft // 2 + 1
    lo = np.clip(np.floor(pos).astype(int), 0, n_dec - 1)
    hi = np.clip(lo + 1, 0, n_dec - 1)
    w = pos - np.floor(pos)
    out = np.zeros((f_voc.size, n_dec))
    rows = np.arange(f_voc.size)
    np.add.at(out, (rows, lo), 1 - w)
    np.add.at(out, (rows, hi), w)
    return out


def spectrum_estimator(htk: np.ndarray, ridge: float = 0.1) -> np.ndarray:
    """Ridge least-squares inverse of the HTK filterbank, (F_dec, n_mels).

    Solves ``min ||M p - m||^2 + ridge * ||p||^2`` per frame for the linear power spectrum
    ``p``; the ridge keeps bins no mel band covers (and ill-conditioned narrow bands) small.
    """
    gram = htk @ htk.T
    scale = float(np.trace(gram)) / gram.shape[0]
    return htk.T @ np.linalg.inv(gram + ridge * scale * np.eye(gram.shape[0]))


class MelBridge(nn.Module):
    """``(B, n_mels_dec, T_dec)`` log1p HTK power mels + ``positions (T_voc,)`` ->
    ``(B, num_mels_voc, T_voc)`` log-clamped Slaney magnitude mels.

    ``positions[j]`` is the fractional decoder frame at the centre of vocoder frame ``j``
    (see :meth:`distill_serve.geometry.FrameGeometry.bridge_positions`).
    """

    to_linear: torch.Tensor
    slaney: torch.Tensor

    def __init__(self, spec: SpectrogramConfig, mel: VocoderMelConfig, ridge: float = 0.1):
        super().__init__()
        htk = htk_filterbank(spec)
        to_linear = frequency_map(spec, mel) @ spectrum_estimator(htk, ridge)
        self.register_buffer("to_linear", torch.tensor(to_linear, dtype=torch.float32))
        self.register_buffer("slaney", torch.tensor(slaney_filterbank(mel), dtype=torch.float32))

    def forward(self, mel_dec: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        power = torch.expm1(mel_dec).clamp_min(0.0)
        n = power.shape[-1]
        base = torch.floor(positions)
        frac = positions - base
        i0 = base.long().clamp(0, n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        power = (
            torch.index_select(power, 2, i0) * (1.0 - frac)
            + torch.index_select(power, 2, i1) * frac
        )
        linear = torch.relu(torch.matmul(self.to_linear, power))
        magnitude = torch.sqrt(linear + 1e-9)
        return torch.log(torch.clamp(torch.matmul(self.slaney, magnitude), min=1e-5))
