"""Streaming ("cached convolution") vocoder graphs: every mel frame goes through the network
once.

A whole-clip vocoder is a stack of non-causal convolutions. Run in blocks, each block must
recompute the receptive field on both sides (``BlockRenderer``: 2 x 15 context frames on
HiFi-GAN), so a live block of 8 frames costs 4.75x its own audio. The cure, from Caillon &
Esling, "Streamable Neural Audio Synthesis With Non-Causal Convolutions" (DAFx 2022; RAVE's
``cached_conv``, used by nn~): every non-causal layer becomes a causal one plus a fixed delay,
keeping the inputs it still needs as state; parallel branches (residuals, HiFi-GAN's
multi-receptive-field sum) get delay lines that line them up; a transposed convolution keeps
the overlap tail of its previous output. Run with its state, the network's output equals the
whole-clip output delayed by a fixed number of samples (:attr:`StreamingVocoder.delay`), to
float rounding.

As in ``cached_conv`` each layer says what it caches and what delay it adds; unlike it (and as
streaming ONNX models such as silero-vad do) the state is explicit: one ``(B, N)`` float32
tensor per stream goes in with each step and comes out updated, so the server can batch
streams by stacking rows, and snapshot or restore a stream by copying its row. Nothing is
hidden in the graph.

Edges. The whole-clip convolutions pad with zeros. Every stateful layer multiplies its input by
a mask that is 0 where the sample lies outside the clip: before its start (from the
``position`` input: frames fed before this step) and from its end on (the ``end`` input: the
clip's length in frames; an open-ended stream passes
:data:`~distill_serve.bundle.STREAM_OPEN_END`). So a stream sees exactly the whole-clip
graph's zero padding at both edges, and HiFi-GAN's output matches from the first sample to the
last: a fixed-length clip's last ``delay_samples`` come out of the stream when it is fed
``latency_frames`` more frames (any values: they are masked) past its end. (``cached_conv``
flushes a stream by feeding zeros, which only approximates the padding of the layers past
the first; here every layer sees its own.) BigVGAN's anti-aliased activations pad by
*replicating* edge samples, which a causal layer cannot know in advance: its first
``head_frames`` and last ``tail_frames`` frames of audio differ, and the server takes them from
the whole-clip graph (the export measures all three parts).

Inputs ``mel (B, n_mels, S)``, ``position (B, 1)`` int64, ``end (B, 1)`` int64, ``state (B,
N)``; outputs ``audio (B, 1, S * hop)`` and ``state_out (B, N)``; B and S are dynamic.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill_serve.export.antialias import PolyphaseActivation
from distill_serve.export.hifigan import LRELU_SLOPE, HiFiGANGenerator

log = logging.getLogger(__name__)


class UnsupportedVocoder(ValueError):
    """A vocoder this module cannot stream (the bundle then keeps the block path only)."""


@dataclass(frozen=True)
class StreamLayout:
    """What the server needs to know of a streaming graph (it goes into the manifest).

    Attributes:
        state_size: N, floats of state per stream.
        delay_samples: the stream's audio lags the whole-clip audio by this many samples.
        latency_frames: mel frames a stream must be fed beyond the audio it is to deliver
            (``ceil(delay_samples / hop)``).
        head_frames: frames at the clip's start whose audio the stream does not match (0 for
            zero-padded vocoders; BigVGAN: its replicate padding's reach).
        tail_frames: frames at a fixed-length clip's end whose audio the stream, told the
            clip's ``end`` and fed ``latency_frames`` past it, does not match (0 for
            zero-padded vocoders; BigVGAN: as its head).
        hop: audio samples per mel frame.
        layers: stateful layers (convolutions, transposed convolutions, delay lines).
    """

    state_size: int
    delay_samples: int
    latency_frames: int
    head_frames: int
    tail_frames: int
    hop: int
    layers: int

    def to_manifest(self) -> dict[str, int]:
        return asdict(self)


class _Builder:
    """Build-time bookkeeping: where each layer's state lives in the flat state vector (the
    signal's delay and rate at each point are :class:`_Point`'s)."""

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
class _Point:
    delay: int  # samples this signal lags the whole-clip one, at its rate
    factor: int  # samples per mel frame at this point


class _Ctx:
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


def _mask(ctx: _Ctx, x: torch.Tensor, factor: int, delay: int) -> torch.Tensor:
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


class _CachedConv(nn.Module):
    """A ``Conv1d`` with padding ``(left, right)`` as a causal conv: it keeps the last
    ``(k - 1) * dilation`` inputs and delays the signal by ``right`` samples."""

    def __init__(
        self, conv: nn.Conv1d, builder: _Builder, point: _Point, left: int, right: int
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

    def forward(self, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        x = _mask(ctx, x, self.factor, self.delay_in)
        if self.context:
            x = torch.cat([ctx.read(self.start, self.stop, self.in_channels), x], dim=2)
            ctx.write(self.start, x[:, :, -self.context :])
        return F.conv1d(x, self.weight, self.bias, dilation=self.dilation, groups=self.groups)


class _CachedConvTranspose(nn.Module):
    """A ``ConvTranspose1d`` (stride u, kernel k, padding p, ``k - u = 2p``) that keeps the
    ``k - u`` overlapping output samples of its last step and adds them to the next; delays
    by ``p`` output samples (and scales the input's delay by u)."""

    def __init__(self, conv: nn.ConvTranspose1d, builder: _Builder, point: _Point) -> None:
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

    def forward(self, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        x = _mask(ctx, x, self.factor, self.delay_in)
        y = F.conv_transpose1d(x, self.weight, None, stride=self.stride)  # (n - 1) u + k
        n = x.shape[2] * self.stride
        previous = ctx.read(self.start, self.stop, self.out_channels)
        head = y[:, :, : self.tail] + previous
        y = torch.cat([head, y[:, :, self.tail :]], dim=2)
        ctx.write(self.start, y[:, :, n:])
        out = y[:, :, :n]
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1)


class _Delay(nn.Module):
    """A delay line of ``length`` samples (lines up a branch with a slower parallel one)."""

    def __init__(self, channels: int, length: int, builder: _Builder) -> None:
        super().__init__()
        self.channels, self.length = channels, length
        self.start, self.stop = builder.claim(channels, length) if length else (0, 0)

    def forward(self, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        if not self.length:
            return x
        x = torch.cat([ctx.read(self.start, self.stop, self.channels), x], dim=2)
        ctx.write(self.start, x[:, :, -self.length :])
        return x[:, :, : -self.length]


class _Residual(nn.Module):
    """``x + branch(x)``, the skip path delayed to meet the branch."""

    def __init__(
        self,
        channels: int,
        build_branch: Callable[[_Point], list[nn.Module]],
        builder: _Builder,
        point: _Point,
    ) -> None:
        super().__init__()
        before = point.delay
        self.branch = nn.ModuleList(build_branch(point))
        self.skip = _Delay(channels, point.delay - before, builder)

    def forward(self, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        y = x
        for layer in self.branch:
            y = layer(y, ctx)
        return self.skip(x, ctx) + y


class _Stateless(nn.Module):
    """A pointwise function in the chain."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        return self.fn(x)


class _Parallel(nn.Module):
    """The mean of parallel branches on the same input, each delayed to the slowest one."""

    def __init__(
        self, channels: int, branches: Sequence[Callable[[_Point], nn.Module]], builder: _Builder,
        point: _Point,
    ) -> None:  # fmt: skip
        super().__init__()
        start = point.delay
        built, delays = [], []
        for make in branches:
            p = _Point(start, point.factor)
            built.append(make(p))
            delays.append(p.delay)
        slowest = max(delays)
        self.branches = nn.ModuleList(built)
        self.align = nn.ModuleList(_Delay(channels, slowest - d, builder) for d in delays)
        point.delay = slowest

    def forward(self, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        total = None
        for branch, align in zip(self.branches, self.align, strict=True):
            y = align(branch(x, ctx), ctx)
            total = y if total is None else total + y
        assert total is not None
        return total / len(self.branches)


class _Chain(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, ctx)
        return x


def _leaky(slope: float) -> _Stateless:
    return _Stateless(lambda x: F.leaky_relu(x, slope))


def _conv(conv: nn.Conv1d, builder: _Builder, point: _Point) -> _CachedConv:
    pad = int(conv.padding[0]) if isinstance(conv.padding, tuple) else int(conv.padding)
    return _CachedConv(conv, builder, point, pad, pad)


# --- HiFi-GAN ------------------------------------------------------------------------------
def _hifigan_resblock(block: Any, builder: _Builder, point: _Point) -> nn.Module:
    first = block.convs1[0] if hasattr(block, "convs1") else block.convs[0]
    channels = int(first.in_channels)
    layers: list[nn.Module] = []
    if hasattr(block, "convs1"):  # "1": lrelu, conv(d), lrelu, conv(1), per dilation
        for c1, c2 in zip(block.convs1, block.convs2, strict=True):

            def branch(p: _Point, c1: nn.Conv1d = c1, c2: nn.Conv1d = c2) -> list[nn.Module]:
                return [
                    _leaky(LRELU_SLOPE), _conv(c1, builder, p),
                    _leaky(LRELU_SLOPE), _conv(c2, builder, p),
                ]  # fmt: skip

            layers.append(_Residual(channels, branch, builder, point))
    else:  # "2": lrelu, conv(d), per dilation
        for c in block.convs:

            def branch2(p: _Point, c: nn.Conv1d = c) -> list[nn.Module]:
                return [_leaky(LRELU_SLOPE), _conv(c, builder, p)]

            layers.append(_Residual(channels, branch2, builder, point))
    return _Chain(layers)


def _hifigan_body(model: HiFiGANGenerator, builder: _Builder, point: _Point) -> _Chain:
    layers: list[nn.Module] = [_conv(model.conv_pre, builder, point)]
    k = model.num_kernels
    for i, up in enumerate(model.ups):
        layers.append(_leaky(LRELU_SLOPE))
        layers.append(_CachedConvTranspose(up, builder, point))
        blocks = list(model.resblocks[i * k : (i + 1) * k])
        channels = int(up.out_channels)
        makers = [(lambda p, b=b: _hifigan_resblock(b, builder, p)) for b in blocks]
        layers.append(_Parallel(channels, makers, builder, point))
    layers.append(_leaky(0.01))  # the official generator's last activation: default slope
    layers.append(_conv(model.conv_post, builder, point))
    layers.append(_Stateless(torch.tanh))
    return _Chain(layers)


# --- BigVGAN -------------------------------------------------------------------------------
def _activation(act: PolyphaseActivation, builder: _Builder, point: _Point) -> _Chain:
    """The polyphase anti-aliased activation (export/antialias.py) as two cached grouped
    convolutions around Snake; its replicate padding becomes the masks' zero padding."""
    c = act.channels
    up = nn.Conv1d(c, 2 * c, act.up_kernel.shape[-1], groups=c, bias=False)
    up.weight.data.copy_(act.up_kernel)
    down = nn.Conv1d(2 * c, c, act.down_kernel.shape[-1], groups=c, bias=False)
    down.weight.data.copy_(act.down_kernel)
    alpha, inv_beta = act.alpha.clone(), act.inv_beta.clone()

    def snake(x: torch.Tensor) -> torch.Tensor:
        s = torch.sin(x * alpha)
        return x + inv_beta * (s * s)

    return _Chain([
        _CachedConv(up, builder, point, act.up_pad, act.up_pad),
        _Stateless(snake),
        _CachedConv(down, builder, point, act.down_left, act.down_right),
    ])  # fmt: skip


def _amp_block(block: Any, builder: _Builder, point: _Point) -> _Chain:
    if not hasattr(block, "convs1"):
        raise UnsupportedVocoder("BigVGAN resblock type 2 (AMPBlock2) is not streamed yet")
    channels = int(block.convs1[0].in_channels)
    acts = list(block.activations)
    layers: list[nn.Module] = []
    for c1, c2, a1, a2 in zip(block.convs1, block.convs2, acts[::2], acts[1::2], strict=True):
        if not isinstance(a1, PolyphaseActivation) or not isinstance(a2, PolyphaseActivation):
            raise UnsupportedVocoder("BigVGAN activations must be the polyphase rewrite")

        def branch(p: _Point, c1: Any = c1, c2: Any = c2, a1: Any = a1, a2: Any = a2) -> list:
            return [
                _activation(a1, builder, p), _conv(c1, builder, p),
                _activation(a2, builder, p), _conv(c2, builder, p),
            ]  # fmt: skip

        layers.append(_Residual(channels, branch, builder, point))
    return _Chain(layers)


def _bigvgan_body(model: nn.Module, builder: _Builder, point: _Point) -> _Chain:
    m: Any = model
    layers: list[nn.Module] = [_conv(m.conv_pre, builder, point)]
    k = m.num_kernels
    for i in range(m.num_upsamples):
        for up in m.ups[i]:
            layers.append(_CachedConvTranspose(up, builder, point))
        blocks = list(m.resblocks[i * k : (i + 1) * k])
        channels = int(m.ups[i][-1].out_channels)
        makers = [(lambda p, b=b: _amp_block(b, builder, p)) for b in blocks]
        layers.append(_Parallel(channels, makers, builder, point))
    if not isinstance(m.activation_post, PolyphaseActivation):
        raise UnsupportedVocoder("BigVGAN's last activation must be the polyphase rewrite")
    layers.append(_activation(m.activation_post, builder, point))
    layers.append(_conv(m.conv_post, builder, point))
    if m.use_tanh_at_final:
        layers.append(_Stateless(torch.tanh))
    else:
        layers.append(_Stateless(lambda x: torch.clamp(x, -1.0, 1.0)))
    return _Chain(layers)


class StreamingVocoder(nn.Module):
    """A vocoder as a step function: ``(mel, position, state) -> (audio, state_out)``.

    Built from a HiFi-GAN generator (``export/hifigan.py``) or a BigVGAN whose activations
    were rewritten by :func:`~distill_serve.export.antialias.polyphase_activations`; shares
    no parameters with it (weights are copied).
    """

    def __init__(
        self, model: nn.Module, family: str, hop: int, head_frames: int = 0, tail_frames: int = 0
    ) -> None:
        super().__init__()
        builder = _Builder()
        point = _Point(delay=0, factor=1)
        if family == "hifigan" and isinstance(model, HiFiGANGenerator):
            self.body = _hifigan_body(model, builder, point)
        elif family == "bigvgan":
            self.body = _bigvgan_body(model, builder, point)
        else:
            raise UnsupportedVocoder(f"no streaming graph for vocoder family {family!r}")
        if point.factor != hop:
            raise UnsupportedVocoder(
                f"upsampling gives {point.factor} samples per frame, not {hop}"
            )
        self.sizes = builder.sizes
        self.layout = StreamLayout(
            state_size=builder.offset,
            delay_samples=point.delay,
            latency_frames=math.ceil(point.delay / hop),
            head_frames=head_frames,
            tail_frames=tail_frames,
            hop=hop,
            layers=builder.layers,
        )

    def initial_state(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.layout.state_size)

    def forward(
        self, mel: torch.Tensor, position: torch.Tensor, end: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = _Ctx(state, position, end, self.sizes)
        audio = self.body(mel, ctx)
        pieces = sorted(ctx.pieces, key=lambda p: p[0])
        return audio, torch.cat([p[1] for p in pieces], dim=1)


#: Step sizes the parity check feeds (the live blocks' 8 and 16 frames, and an odd one).
PARITY_STEPS = (8, 16, 5)

#: ``(mel, position, end, state) -> (audio, state_out)``, numpy in and out.
StepFn = Callable[[Any, Any, Any, Any], tuple[Any, Any]]


def run_stream(
    step: StepFn, mel: Any, state: Any, frames_per_step: int, hop: int, flush: int = 0
) -> Any:
    """Feed the clip ``mel (B, n_mels, T)`` (numpy) through ``step`` in steps of
    ``frames_per_step`` from a zero ``state (B, N)``, then ``flush`` frames of zeros past its
    end (a stream's whole clip needs :attr:`StreamLayout.latency_frames` of them); returns
    the stream's audio ``(B, 1, (T + flush) * hop)`` (numpy), whose first
    :attr:`StreamLayout.delay_samples` samples come before the clip's start."""
    import numpy as np

    batch, n_mels, total = mel.shape
    mel = np.concatenate([mel, np.zeros((batch, n_mels, flush), mel.dtype)], axis=2)
    position = np.zeros((batch, 1), np.int64)
    end = np.full((batch, 1), total, np.int64)
    out = []
    for i in range(0, total + flush, frames_per_step):
        chunk = np.ascontiguousarray(mel[:, :, i : i + frames_per_step])
        audio, state = step(chunk, position, end, state)
        out.append(np.asarray(audio))
        position = position + chunk.shape[2]
    return np.concatenate(out, axis=2)


def export_stream(vocoder: StreamingVocoder, n_mels: int, path: Any) -> Any:
    """Write the step graph as ONNX with dynamic batch and step size (the TorchScript-based
    exporter: see :func:`~distill_serve.export.graphs.export_onnx_traced`)."""
    from distill_serve.export.graphs import export_onnx_traced

    example = [
        torch.randn(2, n_mels, 8),
        torch.zeros(2, 1, dtype=torch.int64),
        torch.full((2, 1), 100, dtype=torch.int64),
        vocoder.initial_state(2),
    ]
    batch = {0: "batch"}
    return export_onnx_traced(
        vocoder,
        example,
        ["mel", "position", "end", "state"],
        ["audio", "state_out"],
        {
            "mel": {0: "batch", 2: "steps"},
            "position": batch,
            "end": batch,
            "state": batch,
            "audio": {0: "batch", 2: "samples"},
            "state_out": batch,
        },
        path,
    )


def build_streaming(model: nn.Module, family: str, hop: int) -> StreamingVocoder | None:
    """The streaming form of a vocoder, or None (logged) when it has a layer this module
    does not stream. BigVGAN (its activations rewritten) differs at the clip's start for as
    many frames as its state reaches back, at most the stream's latency: its head frames; and
    as many at its end (its tail frames)."""
    try:
        stream = StreamingVocoder(model, family, hop)
    except UnsupportedVocoder as exc:
        log.warning("no streaming vocoder graph: %s (the bundle serves with blocks)", exc)
        return None
    if family == "bigvgan":
        edge = stream.layout.latency_frames
        stream = StreamingVocoder(model, family, hop, head_frames=edge, tail_frames=edge)
    return stream.eval()
