"""The mel bridge on real audio: Distill's 48 kHz HTK log1p mel, bridged, against
BigVGAN's own 44.1 kHz Slaney log mel of the same audio."""

from __future__ import annotations

import bigvgan
import numpy as np
import pytest
import torch
import torchaudio

from distill_serve.export.bridge import (
    MelBridge,
    VocoderMelConfig,
    htk_filterbank,
    htk_triangles,
)
from distill_serve.export.checkpoint import SpectrogramConfig
from distill_serve.export.vocoder import FULL_44K_CONFIG
from distill_serve.geometry import FrameGeometry

SPEC = SpectrogramConfig(48000, 2048, 512, 128, 0.0, 24000.0, 2.0)
VMEL = VocoderMelConfig.from_config(FULL_44K_CONFIG)
GEO = FrameGeometry(48000, 512, 44100, 512)
# Natural-log units. Measured: the bridge 0.78-0.88 overall and 0.26-0.28 where loud; without
# the time resampling 1.5 and 1.03-1.19; the unbridged log1p mel 8.4 and 5.0.
MAE_BOUND = 1.1
LOUD_MAE_BOUND = 0.5  # where BigVGAN's mel > -4 (the audible part)


def synthesise(duration: float, seed: int) -> torch.Tensor:
    """Harmonic tones, an exponential chirp and noise bursts at 48 kHz."""
    sr = 48000
    t = np.arange(int(sr * duration)) / sr
    x = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 440 * t)
    x += 0.05 * np.sin(2 * np.pi * 1320 * t)
    f = 100 * np.exp(np.log(80) * t / duration)
    x += 0.15 * np.sin(2 * np.pi * np.cumsum(f) / sr)
    rng = np.random.default_rng(seed)
    burst = np.zeros_like(x)
    n = len(x)
    burst[n // 4 : n // 2] = rng.normal(0, 0.1, n // 2 - n // 4)
    return torch.tensor(x + burst, dtype=torch.float32)


def mels(duration: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    audio48 = synthesise(duration, seed)
    audio44 = torchaudio.functional.resample(audio48, 48000, 44100)
    distill = torchaudio.transforms.MelSpectrogram(
        sample_rate=48000,
        n_fft=2048,
        hop_length=512,
        n_mels=128,
        f_min=0.0,
        f_max=24000.0,
        power=2.0,
        mel_scale="htk",
    )
    m48 = torch.log1p(distill(audio48))[None]
    ref = bigvgan.mel_spectrogram(audio44[None], 2048, 128, 44100, 512, 2048, 0, None)
    return m48, ref


def errors(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    e = (out - ref)[..., 2:-2].abs()  # the outermost frames see different edge padding
    return e.mean().item(), e[ref[..., 2:-2] > -4].mean().item()


@pytest.mark.parametrize("duration", [1.0, 2.5])
def test_bridged_mel_matches_bigvgan_mel(duration: float, report) -> None:  # type: ignore[no-untyped-def]
    m48, ref = mels(duration)
    frames = ref.shape[-1]
    assert abs(frames - round(duration * 44100 / 512)) <= 1
    assert GEO.vocoder_frames(duration) in (frames, frames + 1)
    bridge = MelBridge(SPEC, VMEL).eval()
    positions = torch.from_numpy(GEO.bridge_positions(frames))
    with torch.no_grad():
        out = bridge(m48[..., : GEO.decoder_frames_needed(frames)], positions)
    assert out.shape == ref.shape
    mae, loud = errors(out, ref)
    report(f"mel bridge, {duration} s of test audio: MAE {mae:.3f}, where loud {loud:.3f} (log)")
    assert mae < MAE_BOUND and loud < LOUD_MAE_BOUND


def test_broken_bridges_fail_the_bound(report) -> None:  # type: ignore[no-untyped-def]
    m48, ref = mels(2.0)
    frames = ref.shape[-1]
    bridge = MelBridge(SPEC, VMEL).eval()
    with torch.no_grad():
        no_time_resample = bridge(m48, torch.arange(frames, dtype=torch.float32))
        raw_log1p = m48[..., :frames]  # the original plan: feed the decoder's mel unchanged
    for name, out in (("no time resample", no_time_resample), ("unbridged", raw_log1p)):
        mae, loud = errors(out, ref)
        report(f"mel bridge, broken ({name}): MAE {mae:.3f}, where loud {loud:.3f}")
        assert mae > MAE_BOUND or loud > LOUD_MAE_BOUND


def test_htk_triangles_are_torchaudios_filterbank() -> None:
    """The bridge evaluates the decoder's mel triangles at the vocoder's bins; at the
    decoder's own bins they must be torchaudio's HTK filterbank (what Distill trained on)."""
    dec_bins = np.arange(SPEC.n_fft // 2 + 1) * SPEC.sample_rate / SPEC.n_fft
    assert np.abs(htk_triangles(SPEC, dec_bins) - htk_filterbank(SPEC)).max() < 1e-4
