"""BigVGAN's anti-aliased activation rewritten as polyphase convolutions, for export.

BigVGAN's ``Activation1d`` upsamples 2x with a depthwise ``ConvTranspose1d`` (12-tap Kaiser
sinc), applies Snake/SnakeBeta, and downsamples 2x with a strided depthwise ``Conv1d``, with
replicate padding around both. onnxruntime's CPU kernels run that form slowly: the depthwise
transposed convolution alone was over half of the activation's time in a profile, and the
activations together cost more than the dense convolutions of the full 44 kHz model.

:class:`PolyphaseActivation` computes the same function with no transposed convolution and no
interleaving:

* upsample: one grouped ``Conv1d`` (2 output channels per input channel, 7 taps) on the input
  padded by 3, giving the even and odd output phases as channel pairs ``(2c, 2c + 1)``;
* the Snake/SnakeBeta activation, elementwise on the phases (its parameters repeated per pair);
* downsample: one grouped ``Conv1d`` (2 input channels per group, 7 taps) that reads both
  phases, after padding the phases with the values BigVGAN's replicate padding of the
  interleaved signal would have used (the first even sample on the left, the last odd sample
  on the right).

It is exact up to float rounding (about 1e-6 absolute) at every length, including the edges;
the exporter still checks the whole vocoder graph against the untouched ``bigvgan`` model.
Only ``torch`` (export-side) uses this module; the bundle holds plain ONNX convolutions.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

RATIO = 2


class UnsupportedActivation(ValueError):
    """An ``Activation1d`` this rewrite does not cover (it is then exported as it is)."""


def _taps(
    offsets: list[tuple[int, int, float]],
) -> tuple[torch.Tensor, int, int]:
    """``(phase, offset, weight)`` triples -> a ``(2, taps)`` kernel and its pad (left, right)."""
    lo = min(o for _, o, _ in offsets)
    hi = max(o for _, o, _ in offsets)
    kernel = torch.zeros(2, hi - lo + 1, dtype=torch.float64)
    for phase, offset, weight in offsets:
        kernel[phase, offset - lo] += weight
    return kernel, -lo, hi


def _upsample_taps(filt: torch.Tensor, pad: int, pad_left: int) -> tuple[torch.Tensor, int, int]:
    """Output sample ``2n + phase`` as a correlation of the input around ``n``.

    BigVGAN: ``y[m] = 2 * z[m + pad_left]`` with ``z = conv_transpose(replicate_pad(x, pad), h,
    stride 2)``, so ``y[2n + p] = sum_k 2 h[k] x[n + (p + pad_left - k) / 2 - pad]`` over the
    ``k`` of matching parity.
    """
    terms = []
    for phase in range(RATIO):
        for k, weight in enumerate(filt.tolist()):
            if (phase + pad_left - k) % RATIO == 0:
                offset = (phase + pad_left - k) // RATIO - pad
                if abs(offset) > pad:
                    raise UnsupportedActivation("upsample taps reach past the replicate padding")
                terms.append((phase, offset, RATIO * weight))
    return _taps(terms)


def _downsample_taps(filt: torch.Tensor, pad_left: int) -> tuple[torch.Tensor, int, int]:
    """``y[n] = sum_k f[k] u[2n + k - pad_left]``, with ``u[2m + p]`` = phase ``p`` at ``m``."""
    terms = []
    for k, weight in enumerate(filt.tolist()):
        phase = (k - pad_left) % RATIO
        terms.append((phase, (k - pad_left - phase) // RATIO, weight))
    return _taps(terms)


class PolyphaseActivation(nn.Module):
    """Drop-in, export-friendly replacement for a bigvgan ``Activation1d`` (ratio 2)."""

    up_kernel: torch.Tensor
    down_kernel: torch.Tensor
    first_index: torch.Tensor
    last_index: torch.Tensor
    alpha: torch.Tensor
    inv_beta: torch.Tensor

    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        # bigvgan's modules are untyped; read their attributes as Any
        up: Any = activation.upsample
        low: Any = activation.downsample.lowpass  # type: ignore[union-attr]
        act: Any = activation.act
        down_ratio: Any = activation.downsample.ratio  # type: ignore[union-attr]
        if (
            up.ratio != RATIO
            or down_ratio != RATIO
            or low.stride != RATIO
            or not low.padding
            or low.padding_mode != "replicate"
            or type(act).__name__ not in ("Snake", "SnakeBeta")
        ):
            raise UnsupportedActivation(
                f"only ratio-2 Snake/SnakeBeta activations are rewritten, got {activation!r}"
            )
        channels = int(act.in_features)
        self.channels = channels
        up_k, self.up_pad, up_right = _upsample_taps(
            up.filter.reshape(-1).double(), up.pad, up.pad_left
        )
        if up_right != self.up_pad:
            raise UnsupportedActivation("asymmetric upsample taps")
        down_k, self.down_left, self.down_right = _downsample_taps(
            low.filter.reshape(-1).double(), low.pad_left
        )
        # up: (2C, 1, taps), group c makes channels 2c (even phase) and 2c + 1 (odd phase)
        self.register_buffer("up_kernel", up_k.float().unsqueeze(1).repeat(channels, 1, 1))
        # down: (C, 2, taps), group c reads channels 2c and 2c + 1
        self.register_buffer("down_kernel", down_k.float().unsqueeze(0).repeat(channels, 1, 1))
        alpha = act.alpha.detach().clone()
        beta = act.beta.detach().clone() if type(act).__name__ == "SnakeBeta" else alpha.clone()
        if act.alpha_logscale:
            alpha, beta = torch.exp(alpha), torch.exp(beta)
        inv_beta = 1.0 / (beta + act.no_div_by_zero)
        # the channels whose first / last sample pads each channel pair (see forward)
        pairs = torch.arange(channels).repeat_interleave(RATIO) * RATIO
        self.register_buffer("first_index", pairs)
        self.register_buffer("last_index", pairs + 1)
        self.register_buffer("alpha", alpha.repeat_interleave(RATIO).reshape(1, -1, 1))
        self.register_buffer("inv_beta", inv_beta.repeat_interleave(RATIO).reshape(1, -1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.channels
        padded = F.pad(x, (self.up_pad, self.up_pad), mode="replicate")
        phases = F.conv1d(padded, self.up_kernel, groups=c)
        s = torch.sin(phases * self.alpha)
        phases = phases + self.inv_beta * (s * s)
        # BigVGAN pads the interleaved signal by replicating its first and last samples:
        # the first even-phase and the last odd-phase sample of each channel.
        first = phases[:, :, :1].index_select(1, self.first_index)
        last = phases[:, :, -1:].index_select(1, self.last_index)
        padded = torch.cat(
            [
                first.expand(-1, -1, self.down_left),
                phases,
                last.expand(-1, -1, self.down_right),
            ],
            dim=2,
        )
        return F.conv1d(padded, self.down_kernel, groups=c)


def polyphase_activations(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every supported ``Activation1d`` rewritten; and how many."""
    model = copy.deepcopy(model)
    count = 0
    for name, child in list(model.named_modules()):
        if type(child).__name__ != "Activation1d" or not hasattr(child, "upsample"):
            continue
        try:
            replacement = PolyphaseActivation(child)
        except UnsupportedActivation:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, replacement)  # ModuleList children are named "0", "1", ...
        count += 1
    return model, count
