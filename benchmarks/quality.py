"""Vocoder quality on real recordings (``data/audio/``): copy-synthesis against the path a
served request takes, with Griffin-Lim as the floor.

For each recording:

- ``copy``: the recording at the vocoder's rate, its own mel in the vocoder's declared space
  (the bundle manifest's ``vocoder_mel``), then the bundle's vocoder graph.
- ``served``: the recording at 48 kHz, its Distill mel (HTK, power, ``log1p``; what a trained
  decoder produces), then the bundle's bridge and vocoder graphs through onnxruntime, on the
  frame grid the server uses (:class:`distill_serve.geometry.FrameGeometry`).
- ``griffin_lim``: the bridged mel (the vocoder's input) inverted to a linear spectrogram by
  least squares and phase-reconstructed by Griffin-Lim (64 iterations) with the vocoder's STFT:
  the served path with Griffin-Lim in place of the vocoder graph.
- ``griffin_lim_48k``: Griffin-Lim straight from the Distill mel at 48 kHz (128 bands to
  24 kHz, n_fft 2048): more than any 80-band vocoder input carries, so a reference, not a rival.

Scores: PESQ wide-band (16 kHz, the ``pesq`` package; speech only; the mean over 2.5 s
windows, see :func:`pesq_wb`) and a multi-resolution STFT distance (spectral convergence +
log-magnitude L1 at FFT sizes 256/512/1024; lower is better) against the original. Both
compare at 16 kHz, the band HiFi-GAN universal covers (fmax 8 kHz).
``python -m benchmarks.quality BUNDLE`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import soundfile as sf
import torch
import torchaudio

from distill_serve.bundle import load_bundle
from distill_serve.export.bridge import (
    VocoderMelConfig,
    decoder_log_mel,
    vocoder_filterbank,
    vocoder_log_mel,
)
from distill_serve.export.checkpoint import SpectrogramConfig
from distill_serve.server.pipeline.model import ModelSpec

DATA = Path(__file__).resolve().parent.parent / "data" / "audio"
SCORE_RATE = 16000
STFT_SIZES = (256, 512, 1024)
GRIFFIN_LIM_ITERS = 64
PESQ_WINDOW_S = 2.5
PESQ_STEP_S = 0.25


@dataclass(frozen=True)
class Scores:
    """One recording through one path."""

    recording: str
    path: str
    pesq_wb: float | None
    mrstft: float


def recordings() -> list[Path]:
    """The committed recordings (``data/audio/*.flac``; sources in ``data/README.md``)."""
    return sorted(DATA.glob("*.flac"))


def load(path: Path, rate: int) -> np.ndarray:
    """A recording as float32 mono at ``rate`` (torchaudio's sinc resampler)."""
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    mono = torch.from_numpy(audio.mean(axis=1))
    return resample(mono.numpy(), sr, rate)


def resample(audio: np.ndarray, orig: int, new: int) -> np.ndarray:
    if orig == new:
        return audio.astype(np.float32)
    return torchaudio.functional.resample(torch.from_numpy(audio), orig, new).numpy()


def vocoder_mel_config(manifest: dict[str, Any]) -> VocoderMelConfig:
    """The vocoder's declared mel space, from a bundle manifest."""
    return VocoderMelConfig.from_manifest(manifest["vocoder_mel"])


def decoder_mel_config(manifest: dict[str, Any]) -> SpectrogramConfig:
    """The decoder's mel space, from a bundle manifest."""
    return SpectrogramConfig.from_mapping(manifest["decoder_mel"])


class Bundle:
    """The bridge and vocoder graphs of a bundle on onnxruntime's CPU provider."""

    def __init__(self, root: Path) -> None:
        bundle = load_bundle(root)  # verified, as the server loads it
        self.manifest = bundle.manifest
        self.geometry = ModelSpec.from_bundle(bundle).geometry
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.bridge = ort.InferenceSession(str(root / "bridge.onnx"), opts)
        self.vocoder = ort.InferenceSession(str(root / "vocoder.onnx"), opts)

    @property
    def rate(self) -> int:
        return self.geometry.vocoder_rate

    def vocode(self, mel: np.ndarray) -> np.ndarray:
        return np.asarray(self.vocoder.run(None, {"mel": mel.astype(np.float32)})[0])[0, 0]

    def copy_synthesis(self, audio: np.ndarray) -> np.ndarray:
        """Audio (at the vocoder rate) -> its own vocoder mel -> vocoder."""
        mel = vocoder_log_mel(audio, vocoder_mel_config(self.manifest))[None]
        return self.vocode(mel)[: audio.size]

    def served(self, audio48: np.ndarray) -> np.ndarray:
        """48 kHz audio -> Distill mel -> bridge graph -> vocoder graph, at the vocoder rate."""
        return self.vocode(self.bridged(audio48))[: round(audio48.size / 48000 * self.rate)]

    def bridged(self, audio48: np.ndarray) -> np.ndarray:
        """48 kHz audio -> Distill mel -> bridge graph: the vocoder's input."""
        mel = decoder_log_mel(audio48, decoder_mel_config(self.manifest))[None]
        duration = audio48.size / self.geometry.decoder_rate
        mel_dec, positions = self.geometry.bridge_inputs(mel, duration)
        bridged = self.bridge.run(None, {"mel_dec": mel_dec, "positions": positions})
        return np.asarray(bridged[0])


def griffin_lim_distill(audio48: np.ndarray, spec: SpectrogramConfig) -> np.ndarray:
    """The Distill mel (128 HTK bands to 24 kHz) inverted by least squares and
    phase-reconstructed, at 48 kHz."""
    mel = torch.expm1(torch.from_numpy(decoder_log_mel(audio48, spec))).clamp_min(0)
    inverse = torchaudio.transforms.InverseMelScale(
        n_stft=spec.n_fft // 2 + 1,
        n_mels=spec.n_mels,
        sample_rate=spec.sample_rate,
        f_min=spec.f_min,
        f_max=spec.f_max,
        mel_scale="htk",
        driver="gelsd",
    )
    linear = inverse(mel).clamp_min(0)
    return _griffin_lim(linear, spec.n_fft, spec.n_fft, spec.hop_length, spec.power)


def griffin_lim_vocoder(bridged: np.ndarray, mel: VocoderMelConfig) -> np.ndarray:
    """The vocoder's input (the bridged mel) inverted by least squares and phase-reconstructed
    with the vocoder's STFT: the served path with Griffin-Lim in place of the vocoder graph."""
    magnitude = np.exp(bridged[0].astype(np.float64))
    linear = np.linalg.lstsq(vocoder_filterbank(mel), magnitude, rcond=None)[0].clip(min=0)
    audio = _griffin_lim(
        torch.from_numpy(linear).float(), mel.n_fft, mel.win_size, mel.hop_size, mel.power
    )
    pad = (mel.n_fft - mel.hop_size) // 2
    return audio[pad:]  # center=True output against the vocoder's (n_fft - hop) / 2 padding


def _griffin_lim(linear: torch.Tensor, n_fft: int, win: int, hop: int, power: float) -> np.ndarray:
    torch.manual_seed(0)
    gl = torchaudio.transforms.GriffinLim(
        n_fft=n_fft, win_length=win, hop_length=hop, power=power, n_iter=GRIFFIN_LIM_ITERS
    )
    return gl(linear).numpy()


def fit(audio: np.ndarray, n: int) -> np.ndarray:
    """``audio`` as float32, cut or zero-padded to ``n`` samples (the reference's length)."""
    out = np.zeros(n, np.float32)
    out[: min(n, audio.size)] = audio[:n]
    return out


def mrstft(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Multi-resolution STFT distance (spectral convergence + mean |log magnitude| error,
    averaged over FFT sizes 256/512/1024 with hop n/4); both signals at the same rate."""
    ref, est = torch.from_numpy(reference), torch.from_numpy(fit(estimate, reference.size))
    total = 0.0
    for size in STFT_SIZES:
        window = torch.hann_window(size)
        r = torch.stft(ref, size, size // 4, window=window, return_complex=True).abs()
        e = torch.stft(est, size, size // 4, window=window, return_complex=True).abs()
        convergence = torch.linalg.norm(r - e) / torch.linalg.norm(r)
        log_mag = (torch.log(r + 1e-5) - torch.log(e + 1e-5)).abs().mean()
        total += float(convergence + log_mag)
    return total / len(STFT_SIZES)


def pesq_wb(reference: np.ndarray, estimate: np.ndarray) -> float:
    """PESQ wide-band (ITU-T P.862.2) at 16 kHz, averaged over 2.5 s windows every 0.25 s.

    One score of a whole 4 s utterance moves by up to 0.35 when the estimate's last 50 ms
    change (PESQ's utterance alignment); the mean over windows moves by a few hundredths.
    """
    from pesq import pesq

    estimate = fit(estimate, reference.size)
    size, step = int(PESQ_WINDOW_S * SCORE_RATE), int(PESQ_STEP_S * SCORE_RATE)
    starts = range(0, max(1, reference.size - size + 1), step)
    scores = [
        pesq(SCORE_RATE, reference[a : a + size], estimate[a : a + size], "wb") for a in starts
    ]
    return float(np.mean(scores))


def score(name: str, path: str, reference16: np.ndarray, audio: np.ndarray, rate: int) -> Scores:
    estimate = resample(np.asarray(audio, np.float32), rate, SCORE_RATE)
    speech = name.startswith("speech")
    return Scores(
        recording=name,
        path=path,
        pesq_wb=round(pesq_wb(reference16, estimate), 3) if speech else None,
        mrstft=round(mrstft(reference16, estimate), 3),
    )


def evaluate(bundle_dir: Path, files: list[Path] | None = None) -> list[Scores]:
    """Every recording through copy-synthesis, the served path and Griffin-Lim."""
    bundle = Bundle(bundle_dir)
    spec = decoder_mel_config(bundle.manifest)
    out: list[Scores] = []
    for file in files or recordings():
        name = file.stem
        reference = load(file, SCORE_RATE)
        audio48 = load(file, spec.sample_rate)
        out.append(
            score(
                name, "copy", reference, bundle.copy_synthesis(load(file, bundle.rate)), bundle.rate
            )
        )
        out.append(score(name, "served", reference, bundle.served(audio48), bundle.rate))
        gl_voc = griffin_lim_vocoder(bundle.bridged(audio48), vocoder_mel_config(bundle.manifest))
        out.append(score(name, "griffin_lim", reference, gl_voc, bundle.rate))
        gl_dec = griffin_lim_distill(audio48, spec)
        out.append(score(name, "griffin_lim_48k", reference, gl_dec, 48000))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__)
    p.add_argument("bundle", type=Path, help="bundle dir (its bridge.onnx and vocoder.onnx)")
    p.add_argument("--json", type=Path, help="also write the scores here")
    args = p.parse_args(argv)
    rows = evaluate(args.bundle)
    print(f"{'recording':<24}{'path':<13}{'PESQ-WB':>8}{'MR-STFT':>9}")
    for r in rows:
        pesq_text = "-" if r.pesq_wb is None else f"{r.pesq_wb:.2f}"
        print(f"{r.recording:<24}{r.path:<13}{pesq_text:>8}{r.mrstft:>9.3f}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


@dataclass(frozen=True)
class Texture:
    """How much a clip moves and how tonal it is (50 ms frames, 25 ms hop).

    Attributes:
        loudness_std_db: standard deviation of frame RMS in dB over frames within 40 dB of
            the loudest (stationary noise: ~0.5 dB).
        centroid_std_hz: standard deviation of the spectral centroid across those frames.
        flatness_median: median spectral flatness (1: white noise, near 0: lines).
        periodic_fraction: share of frames whose normalised autocorrelation peaks above 0.5
            at a lag of 60-1000 Hz (pitched sound).
    """

    loudness_std_db: float
    centroid_std_hz: float
    flatness_median: float
    periodic_fraction: float


def texture(audio: np.ndarray, rate: int) -> Texture:
    """:class:`Texture` of a mono clip."""
    size, hop = int(0.05 * rate), int(0.025 * rate)
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), size)[::hop]
    rms_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    keep = rms_db > rms_db.max() - 40
    spectra = np.abs(np.fft.rfft(frames[keep] * np.hanning(size), axis=1)) + 1e-12
    freqs = np.fft.rfftfreq(size, 1 / rate)
    centroid = (spectra * freqs).sum(axis=1) / spectra.sum(axis=1)
    flatness = np.exp(np.mean(np.log(spectra), axis=1)) / np.mean(spectra, axis=1)
    lo, hi = int(rate / 1000), int(rate / 60)
    periodic = []
    for frame in frames[keep]:
        x = frame - frame.mean()
        ac = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * size)) ** 2)[: hi + 1]
        periodic.append(ac[lo:].max() / (ac[0] + 1e-12) > 0.5)
    return Texture(
        loudness_std_db=round(float(np.std(rms_db[keep])), 2),
        centroid_std_hz=round(float(np.std(centroid)), 1),
        flatness_median=round(float(np.median(flatness)), 4),
        periodic_fraction=round(float(np.mean(periodic)), 3),
    )
