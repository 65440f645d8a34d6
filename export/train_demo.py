"""Train the demo's Distill model: a small ConvVAE on a corpus this repository ships.

The corpus is the recordings in ``data/audio/`` (CMU ARCTIC speech, FluidSynth-rendered piano,
guitar, violin, flute and drums; sources in ``data/README.md``) plus instruments synthesised
here from a fixed seed (plucked strings, FM bells, bowed tones with vibrato, filtered noise
swells). Each is taken as Distill mels (48 kHz, HTK, power, ``log1p``) and cut into 1 s chunks.

The model is the real Distill architecture: the decoder is :class:`DistillDecoder` (the export
stage rebuilds it from the checkpoint), the encoder four strided convolutions to a 64-dim mean
and log-variance. The loss is the chunk's mean squared log-mel error plus ``BETA`` times the KL
divergence to N(0, I), so the standard-normal anchors the server draws decode to corpus-like
mels. The slider analysis is a PCA of the corpus's latent means.

``python -m distill_serve.export.train_demo --out export/assets/demo.distill`` (about 10 min on
2 cores) rewrote the shipped checkpoint; the file keeps the decoder only (the server never
encodes), with the training settings in ``training_config``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import nn

from distill_serve.export.bridge import decoder_log_mel
from distill_serve.export.checkpoint import FORMAT_MARKER, SUPPORTED_VERSION, SpectrogramConfig
from distill_serve.export.decoder import DistillDecoder
from distill_serve.export.demo import SPECTROGRAM_CONFIG

SEED = 20261126
RATE = int(SPECTROGRAM_CONFIG["sample_rate"])
LATENT_DIM = 64
CHUNK_FRAMES = 94
HEIGHT, WIDTH = 8, 6
CHUNK_HOP_FRAMES = 12
BETA = 0.02
STEPS = 4000
BATCH = 32
LEARNING_RATE = 2e-3
N_SLIDERS = 8
DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "data" / "audio"


def synthesise(seed: int = SEED, seconds_each: float = 3.0) -> list[np.ndarray]:
    """Plucked strings, FM bells, bowed tones with vibrato and noise swells at 48 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds_each * RATE)
    t = np.arange(n) / RATE
    out: list[np.ndarray] = []
    for midi in (40, 52, 59, 64, 71, 76):
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        period = round(RATE / f0)  # Karplus-Strong pluck
        buf = rng.uniform(-1, 1, period)
        pluck = np.empty(n)
        for i in range(n):
            pluck[i] = buf[i % period]
            buf[i % period] = 0.996 * 0.5 * (buf[i % period] + buf[(i + 1) % period])
        out.append(pluck)
    for f0, ratio, index in ((220.0, 3.5, 4.0), (523.25, 1.4, 6.0), (880.0, 2.76, 3.0)):
        env = np.exp(-t * 1.5)  # FM bell
        out.append(
            env * np.sin(2 * np.pi * f0 * t + index * env * np.sin(2 * np.pi * f0 * ratio * t))
        )
    for f0 in (196.0, 293.66, 440.0):
        vibrato = 1 + 0.006 * np.sin(2 * np.pi * 5.5 * t)
        phase = 2 * np.pi * np.cumsum(f0 * vibrato) / RATE
        bowed = sum(np.sin(k * phase) / k for k in range(1, 16))  # sawtooth-like
        attack = np.minimum(1.0, t / 0.3) * np.minimum(1.0, (t[-1] - t) / 0.3)
        out.append(attack * bowed)
    for centre in (800.0, 3000.0):
        noise = rng.standard_normal(n)
        spec = np.fft.rfft(noise)
        f = np.fft.rfftfreq(n, 1 / RATE)
        spec *= np.exp(-0.5 * (np.log(np.maximum(f, 1.0) / centre) / 0.4) ** 2)
        swell = np.sin(np.pi * t / t[-1]) ** 2
        out.append(swell * np.fft.irfft(spec, n))
    return [0.5 * x / np.abs(x).max() for x in out]


def recordings(corpus: Path) -> list[np.ndarray]:
    """The corpus's recordings as 48 kHz mono, peak 0.5."""
    out = []
    for path in sorted(corpus.glob("*.flac")):
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        mono = torchaudio.functional.resample(torch.from_numpy(audio.mean(axis=1)), sr, RATE)
        out.append(0.5 * mono.numpy() / float(np.abs(mono.numpy()).max()))
    return out


def mel_chunks(signals: list[np.ndarray]) -> torch.Tensor:
    """``(N, 128, 94)`` log1p mel chunks every ``CHUNK_HOP_FRAMES`` frames, at three gains."""
    spec = SpectrogramConfig(**SPECTROGRAM_CONFIG)
    chunks = []
    for signal in signals:
        for gain in (0.5, 1.0, 2.0):
            mel = torch.from_numpy(decoder_log_mel((gain * signal).astype(np.float32), spec))
            for start in range(0, mel.shape[1] - CHUNK_FRAMES + 1, CHUNK_HOP_FRAMES):
                chunks.append(mel[:, start : start + CHUNK_FRAMES])
    return torch.stack(chunks)


class Encoder(nn.Module):
    """``(B, 128, 94)`` log1p mel -> mean and log-variance ``(B, 64)`` each."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((1, 32), (32, 64), (64, 128), (128, 256)):
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.mu = nn.Linear(256 * HEIGHT * WIDTH, LATENT_DIM)
        self.logvar = nn.Linear(256 * HEIGHT * WIDTH, LATENT_DIM)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = nn.functional.pad(mel, (0, 16 * WIDTH - mel.shape[-1]))[:, None]
        h = self.convs(x).flatten(1)
        return self.mu(h), self.logvar(h).clamp(-8, 8)


def train(
    chunks: torch.Tensor, steps: int = STEPS, seed: int = SEED, log_every: int = 100
) -> tuple[Encoder, DistillDecoder, list[float]]:
    torch.manual_seed(seed)
    encoder = Encoder()
    decoder = DistillDecoder(LATENT_DIM, HEIGHT, WIDTH, 128, CHUNK_FRAMES)
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=LEARNING_RATE)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    started = time.perf_counter()
    for step in range(steps):
        batch = chunks[torch.randint(len(chunks), (BATCH,), generator=gen)]
        mu, logvar = encoder(batch)
        z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
        recon = ((decoder(z) - batch) ** 2).mean()
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1))
        loss = recon + BETA * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(recon.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(
                f"step {step:4d}  recon {recon.item():.4f}  kl {kl.item():.2f}  "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
    return encoder.eval(), decoder.eval(), losses


def slider_analysis(encoder: Encoder, chunks: torch.Tensor) -> dict[str, Any]:
    """PCA of the corpus's latent means: the first ``N_SLIDERS`` components as sliders."""
    with torch.no_grad():
        mu = encoder(chunks)[0].numpy().astype(np.float64)
    mean = mu.mean(axis=0)
    _, s, vt = np.linalg.svd(mu - mean, full_matrices=False)
    variance = s**2 / (len(mu) - 1)
    std = np.sqrt(variance[:N_SLIDERS])
    return {
        "pca_components": vt[:N_SLIDERS].astype(np.float32),
        "pca_mean": mean.astype(np.float32),
        "explained_variance": (variance[:N_SLIDERS] / variance.sum()).astype(np.float32),
        "n_active_components": N_SLIDERS,
        "step_size": (0.25 * std).astype(np.float32),  # position 10 = 2.5 standard deviations
        "n_steps": 21,
        "safe_min": np.full(N_SLIDERS, -8.0, dtype=np.float32),
        "safe_max": np.full(N_SLIDERS, 8.0, dtype=np.float32),
        "warning_min": np.full(N_SLIDERS, -10.0, dtype=np.float32),
        "warning_max": np.full(N_SLIDERS, 10.0, dtype=np.float32),
        "component_labels": [f"pc{i + 1}" for i in range(N_SLIDERS)],
    }


def checkpoint_dict(
    decoder: DistillDecoder, analysis: dict[str, Any], n_chunks: int, final_loss: float, steps: int
) -> dict[str, Any]:
    state = {f"decoder.{k}": v.detach().clone() for k, v in decoder.state_dict().items()}
    return {
        "format": FORMAT_MARKER,
        "version": SUPPORTED_VERSION,
        "model_state_dict": state,
        "latent_dim": LATENT_DIM,
        "spectrogram_config": dict(SPECTROGRAM_CONFIG),
        "latent_analysis": analysis,
        "training_config": {
            "chunk_duration_s": 1.0,
            "steps": steps,
            "batch_size": BATCH,
            "learning_rate": LEARNING_RATE,
            "beta_kl": BETA,
            "seed": SEED,
            "chunks": n_chunks,
            "final_recon_mse": round(final_loss, 5),
            "script": "python -m distill_serve.export.train_demo",
        },
        "metadata": {
            "name": "distill-demo",
            "corpus": "data/audio (CMU ARCTIC speech, FluidSynth FluidR3 GM instruments) + "
            "synthesised plucks, bells, bowed tones and noise swells",
            "note": "decoder only; the encoder is not shipped (the server never encodes)",
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill_serve.export.train_demo")
    p.add_argument("--out", type=Path, required=True, help="the .distill file to write")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    p.add_argument("--steps", type=int, default=STEPS)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    chunks = mel_chunks(recordings(args.corpus) + synthesise())
    print(f"{len(chunks)} chunks of {tuple(chunks.shape[1:])}", flush=True)
    encoder, decoder, losses = train(chunks, args.steps)
    analysis = slider_analysis(encoder, chunks)
    final = float(np.mean(losses[-50:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_dict(decoder, analysis, len(chunks), final, args.steps), args.out)
    print(f"wrote {args.out} (recon MSE {final:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
