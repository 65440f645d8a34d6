"""The Distill ConvVAE decoder, rebuilt from a checkpoint's ``decoder.*`` weights."""

from __future__ import annotations

import itertools

import torch
from torch import nn

DECONV_CHANNELS = (256, 128, 64, 32, 1)


class DistillDecoder(nn.Module):
    """Latent ``(B, latent_dim)`` -> log1p mel chunk ``(B, n_mels, chunk_frames)``.

    ``Linear(latent_dim -> 256*H*W)``, four ``ConvTranspose2d(k=3, s=2, p=1, op=1)`` with
    BatchNorm2d + ReLU + Dropout2d between, final Softplus, cropped from ``(16H, 16W)`` to
    ``(n_mels, chunk_frames)``. Module names match the checkpoint keys (``fc``, ``deconvs.N``).
    """

    def __init__(
        self, latent_dim: int, height: int, width: int, n_mels: int, chunk_frames: int
    ) -> None:
        super().__init__()
        if n_mels > 16 * height or chunk_frames > 16 * width:
            raise ValueError(
                f"decoder output (16*{height}, 16*{width}) is smaller than the mel chunk "
                f"({n_mels}, {chunk_frames}); the checkpoint does not fit its spectrogram_config"
            )
        self.latent_dim = latent_dim
        self.height = height
        self.width = width
        self.n_mels = n_mels
        self.chunk_frames = chunk_frames
        self.fc = nn.Linear(latent_dim, DECONV_CHANNELS[0] * height * width)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(itertools.pairwise(DECONV_CHANNELS)):
            layers.append(
                nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1)
            )
            if i < len(DECONV_CHANNELS) - 2:
                layers += [nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout2d(0.0)]
        layers.append(nn.Softplus())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, DECONV_CHANNELS[0], self.height, self.width)
        x = self.deconvs(x)
        return x[:, 0, : self.n_mels, : self.chunk_frames]


def decoder_key_shapes(latent_dim: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
    """The ``decoder.*`` keys a checkpoint must hold, with their shapes."""
    shapes: dict[str, tuple[int, ...]] = {
        "decoder.fc.weight": (DECONV_CHANNELS[0] * height * width, latent_dim),
        "decoder.fc.bias": (DECONV_CHANNELS[0] * height * width,),
    }
    for i, (cin, cout) in enumerate(itertools.pairwise(DECONV_CHANNELS)):
        conv = f"decoder.deconvs.{4 * i}"
        shapes[f"{conv}.weight"] = (cin, cout, 3, 3)
        shapes[f"{conv}.bias"] = (cout,)
        if i < len(DECONV_CHANNELS) - 2:
            bn = f"decoder.deconvs.{4 * i + 1}"
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{bn}.{name}"] = (cout,)
    return shapes
