"""A generation's vocoder audio from the streaming graph: each mel frame is fed once.

:class:`StreamVocoder` hands out the whole-clip vocoder audio of any block, like the block
path (``BlockRenderer``'s windows with context) but without recomputing context: it feeds
each source's frames to its stream state in steps (through the engine's step scheduler, which
batches them with other generations') and keeps the samples not yet asked for. Each step
tells the graph the clip's end (a fixed-length clip's frames; open-ended: never), where it
pads as the whole-clip graph does. Two stretches the stream does not match come from the
whole-clip graph, as the block path computes them:

* the head: the bundle's ``head_frames`` (BigVGAN's replicate-padded start; none on HiFi-GAN);
* the tail of a fixed-length clip, its last ``delay_samples``, where the stream does not
  match the whole-clip graph's right padding (BigVGAN, or a graph exported before the ``end``
  input). Where it does (HiFi-GAN: ``tail_frames`` 0), the stream is fed ``latency_frames``
  past the end (zeros: the graph masks them) and delivers the clip to its last sample.

Mel frames are asked of each :class:`~distill_serve.server.pipeline.mel.MelSource` exactly as
far ahead as the block path asks (``context_frames`` beyond the block, which the model spec
makes at least the stream's latency), so a live control lands on the same mel frame either
way and frames already fed to a state never change. The one exception is a fixed-length clip's head,
whose mel no control can change: it is computed in one whole-clip run at the first block
(a live session computes each block's part of it on that block's window).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from distill_serve.bundle import STREAM_OPEN_END
from distill_serve.server.pipeline.mel import MelSource
from distill_serve.server.pipeline.model import ModelSpec, StreamSpec
from distill_serve.server.pipeline.runner import REST, Runner, Step, StreamState


def step_plan(fed: int, target: int, step: int, split: bool = False) -> list[int]:
    """The step sizes that feed a stream from frame ``fed`` to ``target``: whole steps of
    ``step`` frames and one short step with the rest. A stream's first feed takes the short
    step first (its latency), so its whole steps end at ``target``; a later feed takes it
    last (a clip's tail).

    ``split``: the short step becomes powers of two (largest first), so every step has one of
    a few sizes whatever a clip's length: where steps run on sessions of fixed shapes (the
    device path: server/engine/device_steps.py). On CPU it does not: each extra step costs
    the graph's fixed per-run work (first audio 8-20 % later, measured). Splitting changes no
    state, and the audio only in the last bits (~125 dB)."""
    whole, rest = divmod(max(0, target - fed), step)
    if split:
        pieces = [1 << k for k in reversed(range(rest.bit_length())) if rest >> k & 1]
    else:
        pieces = [rest] if rest else []
    return pieces + [step] * whole if fed == 0 else [step] * whole + pieces


class StreamVocoder:
    """Vocoder audio of ``sources`` (one row each), block by block, from stream states.

    ``total`` is the clip's length in vocoder frames (None: open-ended, live). ``step_frames``
    is the step size fed to the graph (a stream's first feed, its latency, and a clip's tail
    also make a shorter step: :func:`step_plan`).

    ``start`` > 0 (a timeline session primed from a later block, open-ended, blocks of
    ``step_frames``): the states start empty at the step boundary at or before ``start``
    that a stream fed from frame 0 also steps at, so every step after the first ones (the
    states' memory) computes exactly what it computes in a stream played from 0.
    """

    def __init__(
        self,
        runner: Runner,
        model: ModelSpec,
        spec: StreamSpec,
        sources: Sequence[MelSource],
        total: int | None,
        step_frames: int,
        start: int = 0,
    ) -> None:
        if start and total is not None:
            raise ValueError("only an open-ended stream starts after frame 0")
        self._runner = runner
        self._spec = spec
        self._sources = list(sources)
        self._total = total
        self._end = STREAM_OPEN_END if total is None else total
        self._step = step_frames
        self._hop = model.geometry.vocoder_hop
        # A fixed-length clip: the frames fed in all, and the whole-clip sample where its tail
        # from the whole-clip graph starts (None: the stream, fed past the end, delivers it).
        # A tail never starts inside the head: on a clip shorter than head and tail together,
        # the whole-clip graph's head run covers what they share.
        self._last: int | None = None
        self._tail: int | None = None
        if total is not None and spec.streams_to_the_end:
            self._last = total + spec.latency_frames
        elif total is not None:
            self._last = total
            head = spec.head_frames * self._hop
            self._tail = max(head, total * self._hop - spec.delay_samples)
        self._n_mels = model.n_mels_voc
        self._context = model.context_frames
        # each source's state: zeros at first, then what its last step returned
        self._states: list[StreamState] = [
            np.zeros(spec.state_size, np.float32) for _ in self._sources
        ]
        # frames fed to every state: from 0, or from a step boundary of a stream fed from 0
        self._fed = start - (start - spec.latency_frames) % step_frames if start else 0
        self._emitted = self._fed * self._hop  # stream samples out so far (+ delay_samples)
        self._buffer = np.zeros((len(self._sources), 0), np.float32)  # whole-clip samples
        self._buffer_start = start * self._hop  # the whole-clip sample index of _buffer[:, 0]
        self._head: np.ndarray | None = None  # a fixed-length clip's head samples

    def _frames(self, lo: int, hi: int) -> list[np.ndarray]:
        return [s.vocoder_frames(lo, hi) for s in self._sources]

    def _fed_frames(self, lo: int, hi: int) -> list[np.ndarray]:
        """The frames ``[lo, hi)`` a stream is fed: zeros past a fixed-length clip's end."""
        real = min(hi, self._end)
        frames = self._frames(lo, real) if real > lo else []
        if real == hi:
            return frames
        pad = np.zeros((self._n_mels, hi - max(lo, real)), np.float32)
        if not frames:
            return [pad for _ in self._sources]
        return [np.concatenate([f, pad], axis=1) for f in frames]

    def _feed(self, target: int, deadline: float, rank: int) -> None:
        """Feed every source's frames up to ``target`` in steps (sources batched together)."""
        for n in step_plan(self._fed, target, self._step, self._runner.fixed_step_shapes):
            mels = self._fed_frames(self._fed, self._fed + n)
            steps = [
                Step(np.ascontiguousarray(m), self._fed, state, deadline, self._end, rank)
                for m, state in zip(mels, self._states, strict=True)
            ]
            results = self._runner.stream_steps(steps)
            self._states = [state for _, state in results]
            audio = np.stack([a for a, _ in results])
            start = self._emitted - self._spec.delay_samples  # whole-clip index of audio[0]
            if start < 0:
                audio = audio[:, -start:]
                start = 0
            self._append(start, audio)
            self._emitted += n * self._hop
            self._fed += n

    def _append(self, start: int, audio: np.ndarray) -> None:
        end = self._buffer_start + self._buffer.shape[1]
        if start > end:
            raise AssertionError(f"stream audio at {start} leaves a gap after {end}")
        self._buffer = np.concatenate([self._buffer, audio[:, end - start :]], axis=1)

    def _offline(self, a: int, b: int) -> np.ndarray:
        """Whole-clip samples ``[a, b)`` from the whole-clip graph, on a window with context
        on both sides (clipped at the clip's ends), as the block path computes them."""
        hop, ctx = self._hop, self._context
        first = max(s.first_frame for s in self._sources)
        lo = max(first, a // hop - ctx)
        hi = math.ceil(b / hop) + ctx
        if self._total is not None:
            hi = min(hi, self._total)
        windows = self._frames(lo, hi)
        return np.stack(
            [self._runner.vocode(w[None])[a - lo * hop : b - lo * hop] for w in windows]
        )

    def _head_audio(self, a: int, b: int) -> np.ndarray:
        """Head samples ``[a, b)`` from the whole-clip graph: a live block's part on its own
        window; a fixed-length clip's whole head in one run, the first time (one window of
        ``head + context`` frames instead of one per block that reaches into the head)."""
        if self._total is None:
            return self._offline(a, b)
        if self._head is None:
            self._head = self._offline(0, min(self._spec.head_frames, self._total) * self._hop)
        return self._head[:, a:b]

    def audio(
        self, start: int, stop: int, deadline: float | None = None, rank: int = REST
    ) -> np.ndarray:
        """Whole-clip vocoder audio of frames ``[start, stop)``, ``(sources, (stop - start) *
        hop)``, its steps of ``rank`` due by ``deadline`` (None: now). Blocks must come in
        order, each starting where the last one stopped."""
        hop, ctx, spec = self._hop, self._context, self._spec
        deadline = time.monotonic() if deadline is None else deadline
        a, b = start * hop, stop * hop
        if a != self._buffer_start:
            raise ValueError(f"block at frame {start} is not the next one")
        # Bridge the same mel frames the block path would (its window reaches stop + ctx).
        reach = stop + ctx if self._total is None else min(self._total, stop + ctx)
        for s in self._sources:
            s.vocoder_frames(reach - 1, reach)
        head = spec.head_frames * hop
        target = stop + spec.latency_frames
        if self._last is not None:
            target = min(self._last, target)
        # A fixed-length block inside the head takes no stream audio: its stream feed waits
        # for the first block past the head, so first audio costs the head's whole-clip run
        # alone (a live session feeds as it goes: its start-up cost stays spread over blocks).
        if self._total is None or b > head:
            self._feed(target, deadline, rank)
        tail = self._tail
        pieces = []
        if a < head:  # the head: whole-clip graph
            pieces.append(self._head_audio(a, min(b, head)))
        lo = max(a, head)
        hi = b if tail is None else min(b, tail)
        if hi > lo:  # the stream
            pieces.append(self._buffer[:, lo - self._buffer_start : hi - self._buffer_start])
        if tail is not None and b > max(tail, a):  # the clip's tail: whole-clip graph
            pieces.append(self._offline(max(tail, a), b))
        out = np.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]
        # Drop the audio handed out (the renderer releases the mel: needed_from).
        self._buffer = self._buffer[:, min(b - self._buffer_start, self._buffer.shape[1]) :]
        self._buffer_start = b
        return np.ascontiguousarray(out, dtype=np.float32)

    def needed_from(self, stop: int) -> int:
        """The first mel frame this stream may still ask for after the block ending at frame
        ``stop``: what its states and the whole-clip tail still need (the renderer releases
        the frames below it)."""
        fed = min(self._fed, stop)
        return max(0, fed - self._context - self._spec.latency_frames - 1)
