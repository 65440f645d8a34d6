"""Kaiser-windowed sinc resampling (torchaudio) as an exportable polyphase convolution."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio
from torch import nn

LOWPASS_FILTER_WIDTH = 64
RESAMPLING_METHOD = "sinc_interp_kaiser"


@dataclass(frozen=True)
class ResamplerSpec:
    """One rate pair, reduced by its gcd, and the kernel geometry torchaudio uses."""

    orig_rate: int
    new_rate: int
    orig: int  # orig_rate // gcd: input samples per polyphase frame
    new: int  # new_rate // gcd: output samples per polyphase frame
    width: int  # zero padding torchaudio puts before the signal
    kernel_size: int

    def to_manifest(self) -> dict[str, int | str]:
        return {
            "orig_rate": self.orig_rate,
            "new_rate": self.new_rate,
            "orig": self.orig,
            "new": self.new,
            "width": self.width,
            "kernel_size": self.kernel_size,
            "method": RESAMPLING_METHOD,
            "lowpass_filter_width": LOWPASS_FILTER_WIDTH,
        }


class PolyphaseResampler(nn.Module):
    """``(C, L)`` zero-padded input -> ``(C, frames * new)`` with ``frames = (L - K) // orig + 1``.

    This is torchaudio's ``_apply_sinc_resample_kernel`` without its padding and trimming,
    which the server does per block so that state carries across a stream.
    """

    kernel: torch.Tensor

    def __init__(self, orig_rate: int, new_rate: int) -> None:
        super().__init__()
        t = torchaudio.transforms.Resample(
            orig_rate,
            new_rate,
            resampling_method=RESAMPLING_METHOD,
            lowpass_filter_width=LOWPASS_FILTER_WIDTH,
        )
        gcd = math.gcd(orig_rate, new_rate)
        self.spec = ResamplerSpec(
            orig_rate,
            new_rate,
            orig_rate // gcd,
            new_rate // gcd,
            int(t.width),
            int(t.kernel.shape[-1]),
        )
        self.register_buffer("kernel", t.kernel.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.conv1d(x.unsqueeze(1), self.kernel, stride=self.spec.orig)
        return y.transpose(1, 2).reshape(x.shape[0], -1)


def reference_resample(x: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """``torchaudio.functional.resample`` with the bundle's settings (the parity reference)."""
    return torchaudio.functional.resample(
        x,
        orig_rate,
        new_rate,
        resampling_method=RESAMPLING_METHOD,
        lowpass_filter_width=LOWPASS_FILTER_WIDTH,
    )
