"""Signal processing that runs per block: overlap-add, anti-alias, normalise (spatial:
:mod:`distill_serve.server.pipeline.spatial`).

Every stateful step carries its state across blocks, so processing a signal in blocks
gives the same samples as processing it whole. For timeline sessions each also has a
*finite-memory* form (``memory``/``hold``): its output depends only on a bounded stretch of
the input before it, so a session started later and primed with that stretch computes the
same samples as one that played from the start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal


def chunk_window(frames: int) -> np.ndarray:
    """``sin^2(pi (n + 0.5) / N)``: a Hann window with no zero end points, so the summed
    window never vanishes at the signal's edges; it sums to 1 at 50 % overlap."""
    n = np.arange(frames)
    return (np.sin(np.pi * (n + 0.5) / frames) ** 2).astype(np.float64)


def overlap_add(chunks: np.ndarray, offsets: tuple[int, ...], total_frames: int) -> np.ndarray:
    """Window and sum ``(N, M, F)`` chunks at ``offsets``, divided by the summed window.

    Returns ``(M, total_frames)``.
    """
    n, n_mels, frames = chunks.shape
    if n != len(offsets):
        raise ValueError(f"{n} chunks but {len(offsets)} offsets")
    window = chunk_window(frames)
    acc = np.zeros((n_mels, total_frames))
    weight = np.zeros(total_frames)
    for chunk, offset in zip(chunks, offsets, strict=True):
        acc[:, offset : offset + frames] += chunk * window
        weight[offset : offset + frames] += window
    return (acc / np.maximum(weight, 1e-8)).astype(np.float32)


def sos_memory(sos: np.ndarray, tolerance: float = 1e-12) -> int:
    """Samples after which the impulse response of ``sos`` stays below ``tolerance`` of its
    peak (rounded up to a multiple of 64): the input a windowed restart must see again."""
    n = 1 << 12
    while True:
        impulse = np.zeros(n)
        impulse[0] = 1.0
        h = np.abs(signal.sosfilt(sos, impulse))
        above = np.flatnonzero(h > tolerance * h.max())
        if above[-1] < n // 2 or n >= 1 << 20:
            return int(-(-(above[-1] + 1) // 64) * 64)
        n *= 2


class SosFilter:
    """Second-order sections along the last axis of ``(channels, n)`` blocks.

    ``memory`` 0: the state runs on across blocks (the same samples as filtering whole).
    ``memory`` > 0: each block is filtered from rest with the last ``memory`` input samples
    before it, so the output depends only on that stretch (finite memory; with ``memory``
    from :func:`sos_memory` it differs from the running filter by less than ~1e-12 of the
    signal's peak). Returns float64."""

    def __init__(self, sos: np.ndarray, channels: int, memory: int = 0) -> None:
        self._sos = sos
        self._memory = memory
        self._zi = np.zeros((sos.shape[0], channels, 2))
        self._held = np.zeros((channels, memory))

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if not self._memory:
            out, self._zi = signal.sosfilt(self._sos, block, axis=-1, zi=self._zi)
            return np.asarray(out)
        both = np.concatenate([self._held, block], axis=-1)
        self._held = both[:, -self._memory :]
        return np.asarray(signal.sosfilt(self._sos, both, axis=-1)[:, self._memory :])


class AntiAlias(SosFilter):
    """Butterworth low-pass (second-order sections) with per-channel state (``finite``:
    the finite-memory form, its memory from the filter's impulse response)."""

    def __init__(
        self, rate: int, cutoff_hz: float, order: int, channels: int, finite: bool = False
    ) -> None:
        cutoff = min(cutoff_hz, 0.49 * rate)
        sos = signal.butter(order, cutoff, btype="low", fs=rate, output="sos")
        super().__init__(sos, channels, sos_memory(sos) if finite else 0)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return np.asarray(super().__call__(block), dtype=np.float32)


class CausalPeakNormaliser:
    """Peak normalisation without a whole-signal scan.

    The signal is cut into segments of ``segment`` samples at fixed positions (sample 0,
    ``segment``, ...). Each segment's gain is ``target / (peak so far, that segment
    included)``, reached by a short linear ramp from the previous segment's gain; per sample
    the gain is also capped by ``target / running peak``, so no sample exceeds ``target``. The
    first segment sets its gain with no ramp.

    Because segments sit at fixed positions, the output does not depend on how the signal is
    cut into blocks, as long as every block but the last holds whole segments (a live session
    and a fixed-length request then normalise alike). ``segment`` 0 makes each block one
    segment.

    ``hold`` > 0 (timeline sessions; needs ``segment``): the peak is the largest of the last
    ``hold`` whole segments and the current one, not of the whole signal so far, so the
    gain depends only on that stretch (finite memory: a louder passage lowers the gain for
    ``hold`` segments, then it recovers). ``position`` is the signal's first sample on the
    segment grid (a session primed from a later block).
    """

    def __init__(
        self,
        target: float,
        ramp: int,
        segment: int = 0,
        floor: float = 1e-3,
        hold: int = 0,
        position: int = 0,
    ) -> None:
        if hold and not segment:
            raise ValueError("a held peak needs segments")
        self._target = target
        self._ramp = ramp
        self._segment = segment
        self._floor = floor
        self._peak = floor
        self._gain: float | None = None
        self._position = position
        self._hold = hold
        self._held: list[float] = []  # the last ``hold`` whole segments' peaks
        self._segment_peak = floor  # the current segment's peak so far

    def __call__(self, block: np.ndarray) -> np.ndarray:
        n = block.shape[-1]
        if n == 0 or not self._segment:
            return self._normalise(block)
        pieces = []
        i = 0
        while i < n:
            j = min(n, i + self._segment - self._position % self._segment)
            pieces.append(self._normalise(block[..., i:j]))
            self._position += j - i
            i = j
            if self._hold and self._position % self._segment == 0:
                self._held = [*self._held, self._segment_peak][-self._hold :]
                self._segment_peak = self._floor
                self._peak = max(self._held)
        return np.concatenate(pieces, axis=-1)

    def _normalise(self, block: np.ndarray) -> np.ndarray:
        if block.shape[-1] == 0:
            return block
        level = np.max(np.abs(block), axis=0)  # across channels, (n,)
        running = np.maximum(np.maximum.accumulate(level), self._peak)
        self._peak = float(running[-1])
        if self._hold:
            self._segment_peak = max(self._segment_peak, float(level.max()))
        new_gain = self._target / self._peak
        old_gain = new_gain if self._gain is None else self._gain
        n = block.shape[-1]
        ramp = np.full(n, new_gain)
        r = min(self._ramp, n)
        ramp[:r] = old_gain + (new_gain - old_gain) * (np.arange(1, r + 1) / r)
        gain = np.minimum(ramp, self._target / running)
        self._gain = new_gain
        return (block * gain).astype(np.float32)


def fade_out(length: int) -> np.ndarray:
    """A raised-cosine fade from 1 to 0 over ``length`` samples, shape ``(length,)``."""
    n = np.arange(1, length + 1)
    return (0.5 * (1.0 + np.cos(np.pi * n / length))).astype(np.float32)


@dataclass(frozen=True)
class Block:
    """Vocoder frames ``[start, stop)`` computed from ``[lo, hi)`` (with context)."""

    start: int
    stop: int
    lo: int
    hi: int


def plan_blocks(
    total: int, context: int, first: int = 16, growth: float = 2.0, largest: int = 256
) -> list[Block]:
    """Vocoder blocks: a small first block for fast first audio, then growing ones.

    Each block carries ``context`` frames on either side (clipped at the ends), enough
    to cover the vocoder's receptive field, so seams are exact.
    """
    blocks = []
    start, size = 0, max(1, first)
    while start < total:
        stop = min(total, start + size)
        blocks.append(Block(start, stop, max(0, start - context), min(total, stop + context)))
        start = stop
        size = min(largest, int(size * growth))
    return blocks


def fit_window(
    lo: int, hi: int, first: int, last: int | None, buckets: tuple[int, ...]
) -> tuple[int, int]:
    """Widen the vocoder window ``[lo, hi)`` to the smallest bucket that fits, taking extra
    frames on the left (down to ``first``, the first frame still available) or else on the
    right (up to ``last``, the end of the mel; None: open-ended). Extra context does not
    change the block's samples (it lies beyond the vocoder's receptive field). Returns the
    window unchanged when no bucket fits (a clip shorter than the bucket)."""
    size = hi - lo
    for bucket in buckets:
        if bucket < size:
            continue
        if hi - bucket >= first:
            return hi - bucket, hi
        if last is None or lo + bucket <= last:
            return lo, lo + bucket
        break
    return lo, hi
