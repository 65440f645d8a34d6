"""The mel bridge: decoder mels (48 kHz, HTK, power, log1p) -> the vocoder's declared mels
(BigVGAN: 44.1 kHz / 128 Slaney bands; HiFi-GAN: 22.05 kHz / 80 bands up to 8 kHz; both
magnitude and log-clamp) on the vocoder's frame grid (DESIGN section 3).

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
    """The mel space a vocoder declares: what its training computed from audio.

    Read from the vocoder's ``config.json`` (BigVGAN and HiFi-GAN name the STFT fields alike).
    Both families use Slaney mels (librosa's default scale and area norm) of the magnitude
    spectrum, compressed as ``log(clamp(mel, 1e-5))``, with frame ``j`` centred on sample
    ``j * hop + hop / 2`` (reflect pad ``(n_fft - hop) / 2``, ``center=False``). A config may
    override the defaults with ``mel_scale`` ("slaney" | "htk"), ``mel_norm`` ("slaney" |
    null), ``mel_power`` (1: magnitude, 2: power) and ``log_clip``.

    ``decoder_mel``: the vocoder was trained on the decoder's own mel (the Distill app's
    per-model HiFi-GAN: 48 kHz HTK power mels, ``log1p``, torchaudio ``center=True``, frame
    ``j`` centred on sample ``j * hop``); the bridge then passes the frames through
    (:class:`DecoderMelPassThrough`).
    """

    sample_rate: int
    n_fft: int
    hop_size: int
    win_size: int
    num_mels: int
    fmin: float
    fmax: float | None
    mel_scale: str = "slaney"
    norm: str | None = "slaney"
    power: float = 1.0
    log_clip: float = 1e-5
    window: str = "hann"
    decoder_mel: bool = False

    def __post_init__(self) -> None:
        if self.mel_scale not in ("slaney", "htk"):
            raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {self.mel_scale!r}")
        if self.norm not in ("slaney", None):
            raise ValueError(f"mel_norm must be 'slaney' or null, got {self.norm!r}")
        if self.power not in (1.0, 2.0):
            raise ValueError(f"mel_power must be 1 (magnitude) or 2 (power), got {self.power}")

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
            mel_scale=str(config.get("mel_scale", "slaney")),
            norm=config.get("mel_norm", "slaney"),
            power=float(config.get("mel_power", 1.0)),
            log_clip=float(config.get("log_clip", 1e-5)),
            decoder_mel=bool(config.get("decoder_mel", False)),
        )

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> "VocoderMelConfig":
        """The config a bundle manifest's ``vocoder_mel`` (:meth:`to_manifest`) records."""
        return cls(
            sample_rate=int(manifest["sample_rate"]),
            n_fft=int(manifest["n_fft"]),
            hop_size=int(manifest["hop_size"]),
            win_size=int(manifest["win_size"]),
            num_mels=int(manifest["num_mels"]),
            fmin=float(manifest["fmin"]),
            fmax=None if manifest["fmax"] is None else float(manifest["fmax"]),
            mel_scale=str(manifest["mel_scale"]),
            norm=manifest["norm"],
            power=float(manifest["power"]),
            log_clip=float(manifest["log_clip"]),
            window=str(manifest.get("window", "hann")),
            decoder_mel=bool(manifest.get("decoder_mel", False)),
        )

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``vocoder_mel`` (``decoder_mel`` only where true: every other
        vocoder's entry, and the refiner pairing hashed from it, stay as they were)."""
        kind = "magnitude" if self.power == 1.0 else "power"
        entry = {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_size": self.hop_size,
            "win_size": self.win_size,
            "window": self.window,
            "num_mels": self.num_mels,
            "fmin": self.fmin,
            "fmax": self.fmax,
            "mel_scale": self.mel_scale,
            "norm": self.norm,
            "power": self.power,
            "log_clip": self.log_clip,
            "normalisation": (
                f"log1p({kind}_mel)"
                if self.decoder_mel
                else f"log(clamp({kind}_mel, {self.log_clip:g}))"
            ),
            "frame_centre": (
                "j * hop (center=True, the decoder's own frames)"
                if self.decoder_mel
                else "j * hop + hop / 2 (reflect pad (n_fft - hop) / 2, center=False)"
            ),
        }
        return {**entry, "decoder_mel": True} if self.decoder_mel else entry

    @property
    def frame_centre(self) -> float:
        """Where frame ``j`` is centred, in hops after sample ``j * hop``."""
        return 0.0 if self.decoder_mel else 0.5


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


def vocoder_filterbank(mel: VocoderMelConfig) -> np.ndarray:
    """The vocoder's mel filterbank (librosa's, with its declared scale and norm), shape
    (num_mels, n_fft // 2 + 1)."""
    return librosa.filters.mel(
        sr=mel.sample_rate,
        n_fft=mel.n_fft,
        n_mels=mel.num_mels,
        fmin=mel.fmin,
        fmax=mel.fmax,
        htk=mel.mel_scale == "htk",
        norm="slaney" if mel.norm == "slaney" else None,
    ).astype(np.float64)


def vocoder_log_mel(audio: np.ndarray, mel: VocoderMelConfig) -> np.ndarray:
    """``(num_mels, T)`` mel of ``audio`` (mono, at the vocoder's rate) in the vocoder's
    declared space, as its training computed it: reflect pad ``(n_fft - hop) / 2``,
    ``center=False``, Hann window, filterbank, ``log(clamp(., log_clip))``."""
    pad = (mel.n_fft - mel.hop_size) // 2
    x = torch.nn.functional.pad(
        torch.from_numpy(np.asarray(audio, np.float32))[None, None], (pad, pad), mode="reflect"
    )
    spec = torch.stft(
        x[0, 0],
        mel.n_fft,
        mel.hop_size,
        mel.win_size,
        torch.hann_window(mel.win_size),
        center=False,
        return_complex=True,
    ).abs()
    if mel.power == 2.0:
        spec = spec**2
    fb = torch.from_numpy(vocoder_filterbank(mel))
    out = torch.log(torch.clamp(fb @ spec.double(), min=mel.log_clip))
    return out.float().numpy()


def decoder_log_mel(audio: np.ndarray, spec: SpectrogramConfig) -> np.ndarray:
    """``(n_mels, T)`` Distill mel (torchaudio, HTK, ``log1p``) of mono audio at the decoder's
    rate: what a perfectly trained decoder would produce for it."""
    transform = torchaudio.transforms.MelSpectrogram(
        sample_rate=spec.sample_rate,
        n_fft=spec.n_fft,
        hop_length=spec.hop_length,
        n_mels=spec.n_mels,
        f_min=spec.f_min,
        f_max=spec.f_max,
        power=spec.power,
        mel_scale="htk",
    )
    return torch.log1p(transform(torch.from_numpy(np.asarray(audio, np.float32)))).numpy()


def htk_triangles(spec: SpectrogramConfig, freqs: np.ndarray) -> np.ndarray:
    """The decoder's HTK mel triangles evaluated at any frequencies (Hz), (n_mels, len(freqs)).

    At the decoder's own bins this is :func:`htk_filterbank`; the bridge evaluates it at the
    vocoder's bins, so the spectrum estimate lands there exactly (a piecewise-linear function
    of frequency), with no interpolation between two bin grids.
    """

    def to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges_mel = np.linspace(
        to_mel(np.array(spec.f_min)), to_mel(np.array(spec.f_max)), spec.n_mels + 2
    )
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    lo, centre, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    f = np.asarray(freqs, dtype=np.float64)[None, :]
    return np.maximum(0.0, np.minimum((f - lo) / (centre - lo), (hi - f) / (hi - centre)))


def vocoder_bins(mel: VocoderMelConfig) -> np.ndarray:
    """Centre frequencies (Hz) of the vocoder's STFT bins."""
    return np.arange(mel.n_fft // 2 + 1) * mel.sample_rate / mel.n_fft


def spectrum_estimator(htk: np.ndarray, ridge: float = 0.1) -> np.ndarray:
    """Ridge least-squares inverse of an HTK filterbank ``(n_mels, F)``, shape (F, n_mels).

    Solves ``min ||M p - m||^2 + ridge * ||p||^2`` per frame for the linear power spectrum
    ``p``; the ridge keeps bins no mel band covers (and ill-conditioned narrow bands) small.
    """
    gram = htk @ htk.T
    scale = float(np.trace(gram)) / gram.shape[0]
    return htk.T @ np.linalg.inv(gram + ridge * scale * np.eye(gram.shape[0]))


def window_gain(spec: SpectrogramConfig, mel: VocoderMelConfig) -> float:
    """Vocoder STFT magnitude over decoder STFT magnitude for the same sinusoid.

    A sinusoid of amplitude ``A`` has peak magnitude ``A * sum(window) / 2``; with periodic
    Hann windows that is ``A * win / 4``, so the ratio is ``win_voc / win_dec`` in samples
    (1 for BigVGAN's 2048 at both ends, 0.5 for HiFi-GAN's 1024 against Distill's 2048).
    """
    return float(mel.win_size) / float(spec.n_fft)


def default_ridge(spec: SpectrogramConfig, mel: VocoderMelConfig) -> float:
    """The ridge of :func:`spectrum_estimator` for a vocoder.

    0.1 where the vocoder's window has the decoder's length in samples (BigVGAN 44 kHz: the
    lowest mel error on synthetic and real audio); 0.01 otherwise (measured for HiFi-GAN's 1024
    at 22 kHz only, ``benchmarks/quality.py``: PESQ-WB of the bridged speech recording 2.62
    against 2.51 at 0.1 and 2.44 at 0.03, 2.64 at 0.001; music MR-STFT within 3 % of each
    other).
    """
    return 0.1 if mel.win_size == spec.n_fft else 0.01


class MelBridge(nn.Module):
    """``(B, n_mels_dec, T_dec)`` log1p HTK power mels + ``positions (T_voc,)`` ->
    ``(B, num_mels_voc, T_voc)`` mels in the vocoder's declared space (scale, norm, power,
    log clip; :class:`VocoderMelConfig`), at any vocoder rate, FFT size and hop.

    ``positions[j]`` is the fractional decoder frame at the centre of vocoder frame ``j``
    (see :meth:`distill_serve.geometry.FrameGeometry.bridge_positions`). ``refiner``, if
    given, is applied to each output frame last (a learned correction,
    :class:`distill_serve.export.refiner.Refiner`); without one the bridge is linear up to
    the final square root and log.
    """

    to_linear: torch.Tensor
    filterbank: torch.Tensor
    magnitude: bool
    log_clip: float
    ridge: float

    def __init__(
        self,
        spec: SpectrogramConfig,
        mel: VocoderMelConfig,
        ridge: float | None = None,
        refiner: nn.Module | None = None,
    ):
        super().__init__()
        self.ridge = default_ridge(spec, mel) if ridge is None else ridge
        # A decoder band sums the power of the decoder's bins under its triangle; the same
        # band over the vocoder's bins sums (decoder bin width / vocoder bin width) times fewer
        # of them. The estimate is then rescaled to the vocoder's window (power: gain squared).
        triangles = htk_triangles(spec, vocoder_bins(mel))
        density = (spec.sample_rate / spec.n_fft) / (mel.sample_rate / mel.n_fft)
        to_linear = spectrum_estimator(triangles, self.ridge) * density
        to_linear *= window_gain(spec, mel) ** 2
        self.register_buffer("to_linear", torch.tensor(to_linear, dtype=torch.float32))
        fb = torch.tensor(vocoder_filterbank(mel), dtype=torch.float32)
        self.register_buffer("filterbank", fb)
        self.magnitude = mel.power == 1.0
        self.log_clip = mel.log_clip
        self.refiner = nn.Identity() if refiner is None else refiner

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
        if self.magnitude:
            linear = torch.sqrt(linear + 1e-9)
        mel = torch.log(torch.clamp(torch.matmul(self.filterbank, linear), min=self.log_clip))
        return self.refiner(mel)


class DecoderMelPassThrough(nn.Module):
    """The bridge of a vocoder trained on the decoder's own mel (``VocoderMelConfig.
    decoder_mel``): ``(B, n_mels, T_dec)`` log1p mels + ``positions (T_voc,)`` -> the frames
    at those positions, as they are (no filterbank, no rescaling, no change of compression).
    The positions of such a vocoder lie on the decoder's own grid, so every output frame is a
    decoder frame; between frames it would interpolate linearly, as :class:`MelBridge` does.
    """

    def forward(self, mel_dec: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        n = mel_dec.shape[-1]
        base = torch.floor(positions)
        frac = positions - base
        i0 = base.long().clamp(0, n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        return (
            torch.index_select(mel_dec, 2, i0) * (1.0 - frac)
            + torch.index_select(mel_dec, 2, i1) * frac
        )
