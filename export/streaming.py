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

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from distill_serve.export.antialias import PolyphaseActivation
from distill_serve.export.cached_layers import (
    Builder,
    CachedConv,
    CachedConvTranspose,
    Chain,
    Parallel,
    Point,
    Residual,
    Stateless,
    StepContext,
    UnsupportedVocoder,
    cached_conv,
    leaky,
)
from distill_serve.export.hifigan import LRELU_SLOPE, HiFiGANGenerator

log = logging.getLogger(__name__)


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


# --- HiFi-GAN ------------------------------------------------------------------------------
def _hifigan_resblock(block: Any, builder: Builder, point: Point) -> nn.Module:
    first = block.convs1[0] if hasattr(block, "convs1") else block.convs[0]
    channels = int(first.in_channels)
    layers: list[nn.Module] = []
    if hasattr(block, "convs1"):  # "1": lrelu, conv(d), lrelu, conv(1), per dilation
        for c1, c2 in zip(block.convs1, block.convs2, strict=True):

            def branch(p: Point, c1: nn.Conv1d = c1, c2: nn.Conv1d = c2) -> list[nn.Module]:
                return [
                    leaky(LRELU_SLOPE), cached_conv(c1, builder, p),
                    leaky(LRELU_SLOPE), cached_conv(c2, builder, p),
                ]  # fmt: skip

            layers.append(Residual(channels, branch, builder, point))
    else:  # "2": lrelu, conv(d), per dilation
        for c in block.convs:

            def branch2(p: Point, c: nn.Conv1d = c) -> list[nn.Module]:
                return [leaky(LRELU_SLOPE), cached_conv(c, builder, p)]

            layers.append(Residual(channels, branch2, builder, point))
    return Chain(layers)


def _hifigan_body(model: HiFiGANGenerator, builder: Builder, point: Point) -> Chain:
    layers: list[nn.Module] = [cached_conv(model.conv_pre, builder, point)]
    k = model.num_kernels
    for i, up in enumerate(model.ups):
        layers.append(leaky(LRELU_SLOPE))
        layers.append(CachedConvTranspose(up, builder, point))
        blocks = list(model.resblocks[i * k : (i + 1) * k])
        channels = int(up.out_channels)
        makers = [(lambda p, b=b: _hifigan_resblock(b, builder, p)) for b in blocks]
        layers.append(Parallel(channels, makers, builder, point))
    layers.append(leaky(0.01))  # the official generator's last activation: default slope
    layers.append(cached_conv(model.conv_post, builder, point))
    layers.append(Stateless(torch.tanh))
    return Chain(layers)


# --- BigVGAN -------------------------------------------------------------------------------
def _activation(act: PolyphaseActivation, builder: Builder, point: Point) -> Chain:
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

    return Chain([
        CachedConv(up, builder, point, act.up_pad, act.up_pad),
        Stateless(snake),
        CachedConv(down, builder, point, act.down_left, act.down_right),
    ])  # fmt: skip


def _amp_block(block: Any, builder: Builder, point: Point) -> Chain:
    if not hasattr(block, "convs1"):
        raise UnsupportedVocoder("BigVGAN resblock type 2 (AMPBlock2) is not streamed yet")
    channels = int(block.convs1[0].in_channels)
    acts = list(block.activations)
    layers: list[nn.Module] = []
    for c1, c2, a1, a2 in zip(block.convs1, block.convs2, acts[::2], acts[1::2], strict=True):
        if not isinstance(a1, PolyphaseActivation) or not isinstance(a2, PolyphaseActivation):
            raise UnsupportedVocoder("BigVGAN activations must be the polyphase rewrite")

        def branch(p: Point, c1: Any = c1, c2: Any = c2, a1: Any = a1, a2: Any = a2) -> list:
            return [
                _activation(a1, builder, p), cached_conv(c1, builder, p),
                _activation(a2, builder, p), cached_conv(c2, builder, p),
            ]  # fmt: skip

        layers.append(Residual(channels, branch, builder, point))
    return Chain(layers)


def _bigvgan_body(model: nn.Module, builder: Builder, point: Point) -> Chain:
    m: Any = model
    layers: list[nn.Module] = [cached_conv(m.conv_pre, builder, point)]
    k = m.num_kernels
    for i in range(m.num_upsamples):
        for up in m.ups[i]:
            layers.append(CachedConvTranspose(up, builder, point))
        blocks = list(m.resblocks[i * k : (i + 1) * k])
        channels = int(m.ups[i][-1].out_channels)
        makers = [(lambda p, b=b: _amp_block(b, builder, p)) for b in blocks]
        layers.append(Parallel(channels, makers, builder, point))
    if not isinstance(m.activation_post, PolyphaseActivation):
        raise UnsupportedVocoder("BigVGAN's last activation must be the polyphase rewrite")
    layers.append(_activation(m.activation_post, builder, point))
    layers.append(cached_conv(m.conv_post, builder, point))
    if m.use_tanh_at_final:
        layers.append(Stateless(torch.tanh))
    else:
        layers.append(Stateless(lambda x: torch.clamp(x, -1.0, 1.0)))
    return Chain(layers)


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
        builder = Builder()
        point = Point(delay=0, factor=1)
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
        ctx = StepContext(state, position, end, self.sizes)
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
