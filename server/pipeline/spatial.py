"""Spatial processing: mono -> stereo, block by block with state carried across blocks."""

from __future__ import annotations

import numpy as np
from scipy import signal

#: First-order all-pass coefficients of the mid-side decorrelator.
DECORRELATOR = (0.62, -0.37, 0.53, -0.71)


class MidSide:
    """Mono ``(1, n)`` -> stereo ``(2, n)``: L = mid + w * side, R = mid - w * side, where
    side is an all-pass decorrelated copy of mid (same spectrum, scrambled phase).

    :meth:`set_width` glides the width linearly over a number of samples (no step, no click).
    """

    def __init__(self, width: float) -> None:
        self._width = width
        self._glide: tuple[float, float, int, int] | None = None  # (from, to, length, done)
        self._sos = np.array([[a, 1.0, 0.0, 1.0, a, 0.0] for a in DECORRELATOR])
        self._zi = np.zeros((len(DECORRELATOR), 2))

    def set_width(self, width: float, glide_samples: int) -> None:
        """Move to ``width`` over the next ``glide_samples`` samples."""
        if glide_samples <= 0:
            self._width, self._glide = width, None
        else:
            self._glide = (self._width, width, glide_samples, 0)

    def _widths(self, n: int) -> np.ndarray | float:
        if self._glide is None:
            return self._width
        start, end, length, done = self._glide
        t = np.minimum(1.0, (done + 1 + np.arange(n)) / length)
        self._width = float(start + (end - start) * t[-1])
        self._glide = None if done + n >= length else (start, end, length, done + n)
        return start + (end - start) * t

    def __call__(self, mono: np.ndarray) -> np.ndarray:
        mid = mono[0]
        side, self._zi = signal.sosfilt(self._sos, mid, zi=self._zi)
        side = self._widths(mid.size) * 0.5 * side
        return np.stack([mid + side, mid - side]).astype(np.float32)
