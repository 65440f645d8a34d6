"""Spatial processing: mono -> stereo, block by block with state carried across blocks.

Two stereo makers, both with a width that live controls glide (no step, no click):
:class:`MidSide` (side = an all-pass decorrelated copy of the signal) and :class:`HaasStereo`
(the Distill app's stereo: a 15 ms Haas delay, mid/side width, and a depth echo). Each keeps
its filter or delay-line state across blocks, so a signal processed in blocks equals the
signal processed whole.
"""

from __future__ import annotations

import numpy as np

from distill_serve.server.pipeline.dsp import SosFilter, sos_memory

#: First-order all-pass coefficients of the mid-side decorrelator.
DECORRELATOR = (0.62, -0.37, 0.53, -0.71)
#: The Distill app's stereo: the right channel's Haas delay, and the depth echo's longest
#: delay and largest gain (both scaled by depth; depth under 0.01 adds no echo).
HAAS_DELAY_MS = 15.0
DEPTH_DELAY_MS = 40.0
DEPTH_GAIN = 0.15
MIN_DEPTH = 0.01


class WidthGlide:
    """A stereo width that :meth:`set` moves linearly over a number of samples."""

    def __init__(self, width: float) -> None:
        self._width = width
        self._glide: tuple[float, float, int, int] | None = None  # (from, to, length, done)

    def set(self, width: float, glide_samples: int) -> None:
        """Move to ``width`` over the next ``glide_samples`` samples (0: at once)."""
        if glide_samples <= 0:
            self._width, self._glide = width, None
        else:
            self._glide = (self._width, width, glide_samples, 0)

    def take(self, n: int) -> np.ndarray | float:
        """The widths of the next ``n`` samples (one number while no glide runs)."""
        if self._glide is None:
            return self._width
        start, end, length, done = self._glide
        t = np.minimum(1.0, (done + 1 + np.arange(n)) / length)
        self._width = float(start + (end - start) * t[-1])
        self._glide = None if done + n >= length else (start, end, length, done + n)
        return start + (end - start) * t


class DelayLine:
    """``x`` delayed by ``delay`` samples along the last axis, zeros before the signal."""

    def __init__(self, delay: int, channels: int) -> None:
        self._held = np.zeros((channels, delay), np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        both = np.concatenate([self._held, x], axis=-1)
        n = x.shape[-1]
        self._held = both[:, n:]
        return both[:, :n]


class MidSide:
    """Mono ``(1, n)`` -> stereo ``(2, n)``: L = mid + w * side, R = mid - w * side, where
    side is an all-pass decorrelated copy of mid (same spectrum, scrambled phase); ``finite``:
    the all-pass in its finite-memory form (timeline sessions, ``dsp.SosFilter``)."""

    def __init__(self, width: float, finite: bool = False) -> None:
        self._width = WidthGlide(width)
        sos = np.array([[a, 1.0, 0.0, 1.0, a, 0.0] for a in DECORRELATOR])
        self._decorrelate = SosFilter(sos, 1, sos_memory(sos) if finite else 0)

    def set_width(self, width: float, glide_samples: int) -> None:
        """Move to ``width`` over the next ``glide_samples`` samples."""
        self._width.set(width, glide_samples)

    def __call__(self, mono: np.ndarray) -> np.ndarray:
        mid = mono[0]
        side = self._width.take(mid.size) * 0.5 * self._decorrelate(mono)[0]
        return np.stack([mid + side, mid - side]).astype(np.float32)


class HaasStereo:
    """Mono ``(1, n)`` -> stereo ``(2, n)`` as the Distill app makes it.

    The right channel is the signal delayed 15 ms (Haas); then mid = (L + R) / 2,
    side = (L - R) / 2, L = mid + w * side, R = mid - w * side; then, for depth d >= 0.01, a
    copy of both channels delayed ``int(40 d ms)`` is added at gain ``0.15 d``. Delays are
    whole samples at ``rate`` (the app's ``int(ms * rate / 1000)``).
    """

    def __init__(self, width: float, depth: float, rate: int) -> None:
        self._width = WidthGlide(width)
        self._haas = DelayLine(int(HAAS_DELAY_MS * rate / 1000.0), 1)
        echo = int(depth * DEPTH_DELAY_MS * rate / 1000.0)
        self._echo = DelayLine(echo, 2) if depth >= MIN_DEPTH and echo >= 1 else None
        self._echo_gain = depth * DEPTH_GAIN

    def set_width(self, width: float, glide_samples: int) -> None:
        """Move to ``width`` over the next ``glide_samples`` samples."""
        self._width.set(width, glide_samples)

    def __call__(self, mono: np.ndarray) -> np.ndarray:
        left = mono[0]
        right = self._haas(mono[:1])[0]
        mid = (left + right) * 0.5
        side = (left - right) * 0.5 * self._width.take(left.size)
        stereo = np.stack([mid + side, mid - side]).astype(np.float32)
        if self._echo is None:
            return stereo
        return (stereo + self._echo_gain * self._echo(stereo)).astype(np.float32)
