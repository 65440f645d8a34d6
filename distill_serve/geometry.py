"""Frame and chunk geometry shared by the export stage and the server (pure numpy).

Two frame grids meet here: the decoder's (torchaudio ``center=True``: frame ``i`` is centred
on sample ``i * hop`` at the decoder rate) and the vocoder's: BigVGAN's and HiFi-GAN's
(reflect-pad ``(n_fft - hop) / 2`` then ``center=False``: frame ``j`` is centred on sample
``j * hop + hop / 2`` at the vocoder rate), or, for a vocoder trained on the decoder's own
mel (the Distill app's per-model HiFi-GAN), the decoder's grid itself (``vocoder_centre``
0: frame ``j`` is decoder frame ``j``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FrameGeometry:
    """Decoder and vocoder frame grids.

    Attributes:
        decoder_rate: sample rate of the decoder's mel space (48 000).
        decoder_hop: hop of the decoder's mel space in samples (512).
        vocoder_rate: sample rate of the vocoder output (44 100).
        vocoder_hop: samples the vocoder makes per mel frame (512).
        vocoder_centre: where vocoder frame ``j`` is centred, in hops after sample
            ``j * vocoder_hop`` (0.5; 0 for a vocoder on the decoder's own frames).
    """

    decoder_rate: int
    decoder_hop: int
    vocoder_rate: int
    vocoder_hop: int
    vocoder_centre: float = 0.5

    def vocoder_frames(self, duration_s: float) -> int:
        """Vocoder frames whose audio covers ``duration_s`` seconds."""
        return max(1, math.ceil(duration_s * self.vocoder_rate / self.vocoder_hop - 1e-9))

    def decoder_positions(self, n_vocoder_frames: int, first: int = 0) -> np.ndarray:
        """Fractional decoder-frame index (float64) at the centre of vocoder frames
        ``first`` .. ``first + n_vocoder_frames - 1``, shape (T,)."""
        j = np.arange(first, first + n_vocoder_frames, dtype=np.float64)
        t = (j + self.vocoder_centre) * self.vocoder_hop / self.vocoder_rate
        return t * self.decoder_rate / self.decoder_hop

    def bridge_positions(self, n_vocoder_frames: int) -> np.ndarray:
        """Fractional decoder-frame index at the centre of each vocoder frame, shape (T,)."""
        return self.decoder_positions(n_vocoder_frames).astype(np.float32)

    def decoder_frames_needed(self, n_vocoder_frames: int) -> int:
        """Decoder frames the bridge reads for ``n_vocoder_frames`` (it interpolates i, i+1)."""
        last = float(self.bridge_positions(n_vocoder_frames)[-1])
        return math.floor(last) + 2

    def bridge_inputs(
        self, mel_dec: np.ndarray, duration_s: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The bridge's ``mel_dec`` and ``positions`` for the vocoder frames covering
        ``duration_s`` of a whole ``(B, n_mels, T)`` decoder mel: cut to the frames it reads,
        the last repeated where the final vocoder frame reads one past the end."""
        frames = self.vocoder_frames(duration_s)
        needed = self.decoder_frames_needed(frames)
        if needed > mel_dec.shape[2]:
            pad = np.repeat(mel_dec[:, :, -1:], needed - mel_dec.shape[2], axis=2)
            mel_dec = np.concatenate([mel_dec, pad], axis=2)
        return mel_dec[:, :, :needed], self.bridge_positions(frames)


@dataclass(frozen=True)
class ChunkPlan:
    """Where decoded chunks go on the decoder frame axis (DESIGN section 1).

    Attributes:
        chunk_frames: frames per decoded chunk.
        hop_frames: distance between chunk starts, ``chunk_frames // 2`` for 50 % overlap.
        steps: number of chunks.
        offsets: start frame of each chunk (``steps`` values; denser with steps_between).
        total_frames: length of the overlap-added mel.
    """

    chunk_frames: int
    hop_frames: int
    steps: int
    offsets: tuple[int, ...]
    total_frames: int


def plan_chunks(frames_needed: int, chunk_frames: int, steps_between: int = 0) -> ChunkPlan:
    """Chunk starts covering ``frames_needed`` frames.

    ``steps = max(1, ceil((frames_needed - chunk_frames) / hop) + 1)`` chunks at a hop of
    ``chunk_frames // 2``; with ``steps_between`` > 0 (latent_interp) that many extra
    chunks are placed evenly inside every hop.
    """
    if chunk_frames < 2:
        raise ValueError(f"chunk_frames must be >= 2, got {chunk_frames}")
    if steps_between < 0:
        raise ValueError(f"steps_between must be >= 0, got {steps_between}")
    hop = chunk_frames // 2
    steps = max(1, math.ceil((frames_needed - chunk_frames) / hop) + 1)
    total = chunk_frames + (steps - 1) * hop
    sub = steps_between + 1
    n_offsets = (steps - 1) * sub + 1
    offsets = tuple(round(k * hop / sub) for k in range(n_offsets))
    return ChunkPlan(chunk_frames, hop, n_offsets, offsets, total)
