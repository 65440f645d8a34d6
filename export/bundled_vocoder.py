"""The model file's own vocoder: the per-model HiFi-GAN V2 the Distill app trains on a
model's corpus and stores in the ``.distillgan`` file (``vocoder_state``; ``shared/DISTILL.md``
section 2), and which vocoder an export uses (:func:`choose_vocoder`).

The app's generator is the official HiFi-GAN (``conv_pre``, ``ups``, ``resblocks``,
``conv_post``; V2: resblock 1, 128 initial channels) with its weight norm still in the saved
weights (``weight_g`` / ``weight_v``): folded here. It was trained on the decoder's own mel
(48 kHz, n_fft 2048, hop 512, 128 HTK power mels, ``log1p``, ``center=True``), so it is fed
those frames as they are: no bridge, no resampling of frames, 48 kHz out. (The app's own
inference feeds it ``expm1`` of that mel, which it was not trained on; the bundle serves
what it was trained on.)
"""

from __future__ import annotations

import logging
import math
from typing import Any

from distill_serve.export.checkpoint import DistillCheckpoint
from distill_serve.export.hifigan import HiFiGANGenerator, fold_weight_norm
from distill_serve.export.vocoder import LoadedVocoder, VocoderError, load_vocoder

log = logging.getLogger(__name__)

VOCODER_TYPE = "hifigan_v2"
#: The app warns about a per-model vocoder trained for fewer epochs than this.
MIN_EPOCHS = 20
#: ``--vocoder`` values that pick the model file's own vocoder.
AUTO, BUNDLED = "auto", "bundled"


def generator_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The app's ``HiFiGANConfig`` in the official HiFi-GAN names our generator takes."""
    return {
        "resblock": str(app_config["resblock_type"]),
        "upsample_rates": [int(r) for r in app_config["upsample_rates"]],
        "upsample_kernel_sizes": [int(k) for k in app_config["upsample_kernel_sizes"]],
        "upsample_initial_channel": int(app_config["upsample_initial_channel"]),
        "resblock_kernel_sizes": [int(k) for k in app_config["resblock_kernel_sizes"]],
        "resblock_dilation_sizes": [
            [int(d) for d in ds] for ds in app_config["resblock_dilation_sizes"]
        ],
        "num_mels": int(app_config["num_mels"]),
    }


def choose_vocoder(spec: str, ckpt: DistillCheckpoint) -> tuple[LoadedVocoder, str]:
    """The vocoder ``--vocoder spec`` names for ``ckpt``, and why it was chosen (for the
    manifest). ``auto`` chooses as the app does: the model's own vocoder when it has one."""
    if spec == AUTO:
        if ckpt.vocoder_state is None:
            raise VocoderError(
                f"{ckpt.path.name} has no per-model vocoder (the Distill app stores one when "
                "a vocoder was trained for the model); pass --vocoder hifigan-universal, a "
                "HiFi-GAN checkpoint or a BigVGAN directory"
            )
        return bundled_vocoder(ckpt), "the model file's own vocoder (chosen automatically)"
    if spec == BUNDLED:
        return bundled_vocoder(ckpt), "the model file's own vocoder (--vocoder bundled)"
    return load_vocoder(spec), f"--vocoder {spec}"


def bundled_vocoder(ckpt: DistillCheckpoint) -> LoadedVocoder:
    """The per-model vocoder of ``ckpt``, weight norm folded, checked against its config and
    the model's mel (raises :class:`VocoderError` saying which does not fit)."""
    where = f"{ckpt.path.name}: vocoder_state"
    state = ckpt.vocoder_state
    if state is None:
        raise VocoderError(
            f"{ckpt.path.name} has no per-model vocoder (vocoder_state); train one in the "
            "Distill app, or pass --vocoder hifigan-universal, a HiFi-GAN checkpoint or a "
            "BigVGAN directory"
        )
    if state.get("type") != VOCODER_TYPE:
        raise VocoderError(f"{where}: type {state.get('type')!r}, expected {VOCODER_TYPE!r}")
    config, weights = state.get("config"), state.get("generator_state_dict")
    if not isinstance(config, dict) or not isinstance(weights, dict):
        raise VocoderError(f"{where}: lacks its config or generator_state_dict")
    try:
        generator = generator_config(config)
        rate, hop = int(config["sample_rate"]), int(config["hop_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise VocoderError(f"{where}: its config lacks or mistypes {exc}") from None
    spec = ckpt.spectrogram
    upsampling = math.prod(generator["upsample_rates"])
    for name, found, wanted in (
        ("hop_size", hop, spec.hop_length),
        ("upsample_rates product", upsampling, spec.hop_length),
        ("num_mels", generator["num_mels"], spec.n_mels),
        ("sample_rate", rate, spec.sample_rate),
    ):
        if found != wanted:
            raise VocoderError(
                f"{where}: its {name} is {found}, but the model's mel has {wanted}; the vocoder "
                "does not belong to this model (retrain it in the Distill app)"
            )
    folded = fold_weight_norm(weights)
    model = HiFiGANGenerator(generator)
    try:
        model.load_state_dict(folded)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise VocoderError(
            f"{where}: its config does not match its weights (channels, kernels or mel count "
            f"differ): {first}"
        ) from None
    meta = state.get("training_metadata") or {}
    epochs = int(meta.get("epochs", 0))
    if epochs < MIN_EPOCHS:
        log.warning(
            "%s: the per-model vocoder trained for %d epochs (under %d%s): expect artefacts; "
            "train it longer in the Distill app, or pass --vocoder hifigan-universal",
            ckpt.path.name,
            epochs,
            MIN_EPOCHS,
            ", and its training was cancelled" if "checkpoint" in state else "",
        )
    mel_config = {
        "sampling_rate": spec.sample_rate,
        "hop_size": spec.hop_length,
        "n_fft": spec.n_fft,
        "win_size": spec.n_fft,
        "num_mels": spec.n_mels,
        "fmin": spec.f_min,
        "fmax": spec.f_max,
        "mel_scale": "htk",
        "mel_norm": None,
        "mel_power": spec.power,
        "decoder_mel": True,
    }
    return LoadedVocoder(
        model=model.eval(),
        config={
            **generator,
            **mel_config,
            "app_config": config,
            "training_metadata": {
                **{
                    k: meta[k]
                    for k in ("epochs", "total_epochs", "final_loss", "training_date")
                    if k in meta
                },
                "cancelled": "checkpoint" in state,
            },
        },
        source=f"{ckpt.path.name} (per-model HiFi-GAN V2)",
        family="hifigan",
    )
