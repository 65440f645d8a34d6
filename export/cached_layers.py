"""The cached-convolution layers a streaming vocoder graph is built from (after Caillon &
Esling, DAFx 2022, and RAVE's ``cached_conv``): each layer says what it caches in the flat
state vector (:class:`Builder`) and what delay it adds (:class:`Point`), and reads and writes
its part of the state through the step's :class:`StepContext`. ``streaming.py`` assembles
them into the HiFi-GAN and BigVGAN step graphs and says why they are shaped so.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedVocoder(ValueError):
    """A vocoder this module cannot stream (the bundle then keeps the block path only)."""


class Builder:
    """Build-time bookkeeping: where each layer's state lives in the flat state vector (the
    signal's delay and rate at each point are :class:`Point`'s)."""

    def __init__(self) -> None:
        self.offset = 0
        self.layers = 0
        self.sizes: list[int] = []  # each claim's length in the state vector, in order

    def claim(self, channels: int, length: int) -> tuple[int, int]:
        start = self.offset
        self.offset += channels * length
        self.layers += 1
        self.sizes.append(channels * length)
        return start, self.offset


@dataclass
class Point:
    delay: int  # samples this signal lags the whole-clip one, at its rate
    factor: int  # samples per mel frame at this point


class StepContext:
    """Per-step values the layers share: the incoming state, the pieces of the new one, the
    stream position (mel frames fed before this step, ``(B, 1)`` int64) and the clip's end
    (its length in frames, ``(B, 1)`` int64)."""

    def __init__(
        self, state: torch.Tensor, position: torch.Tensor, end: torch.Tensor, sizes: list[int]
    ) -> None:
        self.position = position
        self.end = end.unsqueeze(1)  # (B, 1, 1)
        parts = torch.split(state, sizes, dim=1)  # one Split node, not a Slice per layer
        self.parts = dict(zip(itertools.accumulate([0, *sizes[:-1]]), parts, strict=True))
        self.pieces: list[tuple[int, torch.Tensor]] = []
        self.index: dict[int, torch.Tensor] = {}
        self.masks: dict[tuple[int, int], torch.Tensor] = {}

    # Shapes here are constants or -1 (never ``x.shape[0]``), and masks are shared: each
    # traced shape query is a Shape/Gather/Unsqueeze/Concat chain in the ONNX graph, and
    # onnxruntime's session start (its memory-reuse planner) grows faster than the node count.
    def read(self, start: int, stop: int, channels: int) -> torch.Tensor:
        return self.parts[start].reshape(-1, channels, (stop - start) // channels)

    def write(self, start: int, value: torch.Tensor) -> None:
        self.pieces.append((start, value.flatten(1)))


def mask(ctx: StepContext, x: torch.Tensor, factor: int, delay: int) -> torch.Tensor:
    """``x`` with the samples that lie outside the clip set to 0 (the zero padding the
    whole-clip graph sees there): a signal that lags the whole clip by ``delay`` samples holds
    the clip's samples ``[0, end * factor)`` at stream indices ``[delay, delay + end *
    factor)``. One sample index per rate and one mask per (rate, delay): every input at one
    rate has the step's length at that rate."""
    if factor not in ctx.index:  # (B, 1, L): each sample's index in the clip at this rate
        steps = torch.arange(x.shape[-1], device=x.device).unsqueeze(0)
        ctx.index[factor] = (ctx.position * factor + steps).unsqueeze(1)
    key = (factor, delay)
    if key not in ctx.masks:
        index = ctx.index[factor]
        inside = (index >= delay) & (index < ctx.end * factor + delay)
        ctx.masks[key] = inside.to(x.dtype)
    return x * ctx.masks[key]


class CachedConv(nn.Module):
    """A ``Conv1d`` with padding ``(left, right)`` as a causal conv: it keeps the last
    ``(k - 1) * dilation`` inputs and delays the signal by ``right`` samples."""

    def __init__(
        self, conv: nn.Conv1d, builder: Builder, point: Point, left: int, right: int
    ) -> None:
        super().__init__()
        if conv.stride[0] != 1:
            raise UnsupportedVocoder(f"strided convolution {conv}")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.dilation = int(conv.dilation[0])
        self.groups = int(conv.groups)
        self.context = (int(conv.kernel_size[0]) - 1) * self.dilation
        if left + right != self.context:
            raise UnsupportedVocoder(f"padding {left}+{right} does not match {conv}")
        self.in_channels = int(conv.in_channels)
        self.factor, self.delay_in = point.factor, point.delay
        self.start, self.stop = builder.claim(self.in_channels, self.context)
        point.delay += right

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        x = mask(ctx, x, self.factor, self.delay_in)
        if self.context:
            x = torch.cat([ctx.read(self.start, self.stop, self.in_channels), x], dim=2)
            ctx.write(self.start, x[:, :, -self.context :])
        return F.conv1d(x, self.weight, self.bias, dilation=self.dilation, groups=self.groups)


class CachedConvTranspose(nn.Module):
    """A ``ConvTranspose1d`` (stride u, kernel k, padding p, ``k - u = 2p``) that keeps the
    ``k - u`` overlapping output samples of its last step and adds them to the next; delays
    by ``p`` output samples (and scales the input's delay by u)."""

    def __init__(self, conv: nn.ConvTranspose1d, builder: Builder, point: Point) -> None:
        super().__init__()
        k, u, p = int(conv.kernel_size[0]), int(conv.stride[0]), int(conv.padding[0])
        if k - u != 2 * p or conv.groups != 1 or conv.dilation[0] != 1 or conv.output_padding[0]:
            raise UnsupportedVocoder(f"transposed convolution {conv}")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.stride, self.tail = u, k - u
        self.out_channels = int(conv.out_channels)
        self.factor, self.delay_in = point.factor, point.delay
        self.start, self.stop = builder.claim(self.out_channels, self.tail)
        point.delay = point.delay * u + p
        point.factor *= u

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        x = mask(ctx, x, self.factor, self.delay_in)
        y = F.conv_transpose1d(x, self.weight, None, stride=self.stride)  # (n - 1) u + k
        n = x.shape[2] * self.stride
        previous = ctx.read(self.start, self.stop, self.out_channels)
        head = y[:, :, : self.tail] + previous
        y = torch.cat([head, y[:, :, self.tail :]], dim=2)
        ctx.write(self.start, y[:, :, n:])
        out = y[:, :, :n]
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1)


class Delay(nn.Module):
    """A delay line of ``length`` samples (lines up a branch with a slower parallel one)."""

    def __init__(self, channels: int, length: int, builder: Builder) -> None:
        super().__init__()
        self.channels, self.length = channels, length
        self.start, self.stop = builder.claim(channels, length) if length else (0, 0)

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if not self.length:
            return x
        x = torch.cat([ctx.read(self.start, self.stop, self.channels), x], dim=2)
        ctx.write(self.start, x[:, :, -self.length :])
        return x[:, :, : -self.length]


class Residual(nn.Module):
    """``x + branch(x)``, the skip path delayed to meet the branch."""

    def __init__(
        self,
        channels: int,
        build_branch: Callable[[Point], list[nn.Module]],
        builder: Builder,
        point: Point,
    ) -> None:
        super().__init__()
        before = point.delay
        self.branch = nn.ModuleList(build_branch(point))
        self.skip = Delay(channels, point.delay - before, builder)

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        y = x
        for layer in self.branch:
            y = layer(y, ctx)
        return self.skip(x, ctx) + y


class Stateless(nn.Module):
    """A pointwise function in the chain."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return self.fn(x)


class Parallel(nn.Module):
    """The mean of parallel branches on the same input, each delayed to the slowest one."""

    def __init__(
        self, channels: int, branches: Sequence[Callable[[Point], nn.Module]], builder: Builder,
        point: Point,
    ) -> None:  # fmt: skip
        super().__init__()
        start = point.delay
        built, delays = [], []
        for make in branches:
            p = Point(start, point.factor)
            built.append(make(p))
            delays.append(p.delay)
        slowest = max(delays)
        self.branches = nn.ModuleList(built)
        self.align = nn.ModuleList(Delay(channels, slowest - d, builder) for d in delays)
        point.delay = slowest

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        total = None
        for branch, align in zip(self.branches, self.align, strict=True):
            y = align(branch(x, ctx), ctx)
            total = y if total is None else total + y
        assert total is not None
        return total / len(self.branches)


class Chain(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, ctx)
        return x


def leaky(slope: float) -> Stateless:
    return Stateless(lambda x: F.leaky_relu(x, slope))


def cached_conv(conv: nn.Conv1d, builder: Builder, point: Point) -> CachedConv:
    pad = int(conv.padding[0]) if isinstance(conv.padding, tuple) else int(conv.padding)
    return CachedConv(conv, builder, point, pad, pad)
