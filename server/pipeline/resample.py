"""Stateful Kaiser-sinc resampling over blocks (pure numpy around a polyphase graph).

The bundle's resampler graph computes torchaudio's polyphase convolution on a padded
window; this class does torchaudio's zero padding and trimming across blocks, so the
concatenated output equals ``torchaudio.functional.resample`` of the whole signal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Polyphase = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ResamplerGeometry:
    """A rate pair reduced by its gcd (``orig`` in, ``new`` out per frame) and kernel size."""

    orig: int
    new: int
    width: int
    kernel_size: int

    @classmethod
    def from_manifest(cls, d: dict[str, int]) -> ResamplerGeometry:
        return cls(int(d["orig"]), int(d["new"]), int(d["width"]), int(d["kernel_size"]))

    def output_length(self, n_in: int) -> int:
        """torchaudio's output length, ``ceil(new * n_in / orig)``."""
        return -(-self.new * n_in // self.orig)


class StreamingResampler:
    """Feed ``(C, n)`` blocks with :meth:`push`, then call :meth:`flush` once."""

    def __init__(self, polyphase: Polyphase, geometry: ResamplerGeometry, channels: int) -> None:
        self._run = polyphase
        self._geo = geometry
        self._buf = np.zeros((channels, geometry.width), dtype=np.float32)
        self._n_in = 0
        self._n_out = 0

    def _frames(self, buf: np.ndarray) -> np.ndarray:
        g = self._geo
        n_frames = (buf.shape[1] - g.kernel_size) // g.orig + 1
        if buf.shape[1] < g.kernel_size or n_frames <= 0:
            self._buf = buf
            return np.zeros((buf.shape[0], 0), dtype=np.float32)
        out = self._run(np.ascontiguousarray(buf[:, : (n_frames - 1) * g.orig + g.kernel_size]))
        self._buf = buf[:, n_frames * g.orig :]
        return out

    def push(self, block: np.ndarray) -> np.ndarray:
        """Resample the next block; returns every output sample that is now final."""
        self._n_in += block.shape[1]
        out = self._frames(np.concatenate([self._buf, block.astype(np.float32)], axis=1))
        self._n_out += out.shape[1]
        return out

    def flush(self) -> np.ndarray:
        """End of signal: pad with zeros like torchaudio and trim to its output length."""
        g = self._geo
        tail = np.zeros((self._buf.shape[0], g.width + g.orig), dtype=np.float32)
        out = self._frames(np.concatenate([self._buf, tail], axis=1))
        keep = max(0, g.output_length(self._n_in) - self._n_out)
        self._n_out += min(keep, out.shape[1])
        return out[:, :keep]


def resample_whole(polyphase: Polyphase, geometry: ResamplerGeometry, x: np.ndarray) -> np.ndarray:
    """Resample a whole ``(C, n)`` signal in one block."""
    r = StreamingResampler(polyphase, geometry, x.shape[0])
    return np.concatenate([r.push(x), r.flush()], axis=1)
