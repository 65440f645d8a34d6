"""The vocoder-ready mel of one seed, made on demand: latent -> decoder chunk -> overlap-add
-> bridge, one chunk at a time.

A fixed-length request and an open-ended live session read their mel from the same
:class:`MelSource`, so they agree frame for frame wherever both exist. Memory is bounded:
frames are made when asked for and dropped once released.
"""

from __future__ import annotations

import math

import numpy as np

from distill_serve.server.pipeline.dsp import chunk_window
from distill_serve.server.pipeline.model import ModelSpec
from distill_serve.server.pipeline.request import GenerationParams, Spatial
from distill_serve.server.pipeline.runner import PipelineStats, Runner
from distill_serve.server.pipeline.timeline_path import TimelinePath
from distill_serve.server.pipeline.trajectory import ANCHOR_S, LatentPath

DECODER_BATCH = 256
#: log1p mel ceiling (a power of ~1e13): extreme latents can overflow expm1 in the bridge.
MAX_LOG1P_MEL = 30.0


class ChunkGrid:
    """Where decoder chunks start: chunk ``m`` at decoder frame ``base + round(m hop / sub)``
    (``hop`` half a chunk of ``frames``, ``sub`` = steps between + 1)."""

    def __init__(self, frames: int, sub: int, base: int = 0) -> None:
        self.frames, self.hop, self.sub, self.base = frames, frames // 2, sub, base

    def offset(self, m: int) -> int:
        """Chunk ``m``'s first decoder frame."""
        return self.base + round(m * self.hop / self.sub)

    def first_covering(self, frame: int) -> int:
        """The first chunk that covers decoder frame ``frame`` (or starts after it)."""
        m = max(0, math.floor((frame - self.base - self.frames) * self.sub / self.hop) - 2)
        while self.offset(m) + self.frames <= frame:
            m += 1
        return m

    def at_or_after(self, frame: int) -> int:
        """The first chunk that starts at or after decoder frame ``frame``."""
        m = max(0, math.floor((frame - self.base) * self.sub / self.hop) - 2)
        while self.offset(m) < frame:
            m += 1
        return m


def first_decoder_frame(model: ModelSpec, vocoder_frame: int) -> int:
    """The first decoder frame the bridge reads for ``vocoder_frame``."""
    return math.floor(model.geometry.decoder_positions(1, first=vocoder_frame)[0])


class MelSource:
    """Vocoder mel frames ``[lo, hi)`` of one seed's trajectory, asked for in increasing order.

    Decoder chunks start every ``hop / (steps_between + 1)`` decoder frames (``hop`` is half a
    chunk). Each chunk is Hann-windowed and overlap-added; a decoder frame is final once every
    chunk that starts at or before it is decoded, and only final frames reach the bridge.
    ``max_chunks`` ends the trajectory (a fixed-length request: DESIGN section 1's plan);
    None makes it open-ended (live).

    A timeline session's source (a :class:`TimelinePath`) keeps one chunk grid from frame 0,
    may start at any vocoder frame ``start_frame`` (its chunks from the first that reaches
    that frame's decoder frames) and decodes one chunk per decoder run (``decoder_batch``
    1), so each chunk's mel is computed alike however playback reached it.

    :meth:`steer` bends the trajectory: the next chunk starts at the first decoder frame no
    vocoder frame has used yet, so frames already turned into audio never change and the
    next vocoder block already depends on the new latent.
    """

    def __init__(
        self,
        runner: Runner,
        model: ModelSpec,
        path: LatentPath | TimelinePath,
        chunk_frames: int,
        steps_between: int,
        stats: PipelineStats,
        max_chunks: int | None = None,
        start_frame: int = 0,
        decoder_batch: int = DECODER_BATCH,
    ) -> None:
        self._runner = runner
        self._geo = model.geometry
        self._pass_through = model.bridge_pass_through
        self.path = path
        self._chunk_frames = chunk_frames
        self._window = chunk_window(chunk_frames)
        self._hop = chunk_frames // 2
        self._sub = steps_between + 1
        self._stats = stats
        self._max_chunks = max_chunks
        self._chunks = 0
        self.grid = ChunkGrid(chunk_frames, self._sub)  # the current grid (steering moves it)
        self._grid_m = 0
        # Overlap-add accumulators; column 0 is decoder frame ``_dec_base``.
        self._acc = np.zeros((0, 0))
        self._weight = np.zeros(0)
        self._dec_base = 0
        self._dec_used = 0  # decoder frames [0, _dec_used) have reached the bridge
        # Bridged vocoder frames; column 0 is vocoder frame ``_voc_base``.
        self._voc = np.zeros((model.n_mels_voc, 0), np.float32)
        self._voc_base = 0
        self._decoder_batch = decoder_batch
        if start_frame:
            self._start_at(start_frame, model)

    def _start_at(self, frame: int, model: ModelSpec) -> None:
        """Start at vocoder frame ``frame``: from the first chunk that covers the first
        decoder frame the bridge reads for it."""
        m = self.grid.first_covering(first_decoder_frame(model, frame))
        self._grid_m = self._chunks = m
        self._dec_base = self._dec_used = self.grid.offset(m)
        self._voc_base = frame
        if isinstance(self.path, TimelinePath) and self.path.next_chunk != m:
            raise ValueError(f"the path starts at chunk {self.path.next_chunk}, the mel at {m}")

    def _next_offset(self) -> int:
        return self.grid.offset(self._grid_m)

    def _exhausted(self) -> bool:
        return self._max_chunks is not None and self._chunks >= self._max_chunks

    def _decode_until(self, end: int) -> None:
        """Decode every chunk that starts before decoder frame ``end``: frames < end are final."""
        offsets: list[int] = []
        latents: list[np.ndarray] = []
        while not self._exhausted() and self._next_offset() < end:
            offsets.append(self._next_offset())
            latents.append(self.path.next())
            self._grid_m += 1
            self._chunks += 1
        if not offsets:
            return
        z = np.stack(latents)
        batch = self._decoder_batch
        decoded = np.concatenate(
            [self._runner.decode(z[i : i + batch]) for i in range(0, len(z), batch)]
        )[:, :, : self._chunk_frames]
        self._stats.decoder_chunks += len(offsets)
        frames = self._chunk_frames
        if self._acc.shape[0] == 0:
            self._acc = np.zeros((decoded.shape[1], 0))
        grow = offsets[-1] + frames - self._dec_base - self._weight.size
        if grow > 0:
            self._acc = np.concatenate([self._acc, np.zeros((self._acc.shape[0], grow))], axis=1)
            self._weight = np.concatenate([self._weight, np.zeros(grow)])
        for chunk, offset in zip(decoded, offsets, strict=True):
            at = offset - self._dec_base
            self._acc[:, at : at + frames] += chunk * self._window
            self._weight[at : at + frames] += self._window

    def vocoder_frames(self, lo: int, hi: int) -> np.ndarray:
        """Vocoder mel frames ``[lo, hi)``, ``(n_mels_voc, hi - lo)`` float32.

        ``lo`` must not be below the last :meth:`release` point.
        """
        if lo < self._voc_base:
            raise ValueError(f"vocoder frame {lo} was released (kept from {self._voc_base})")
        done = self._voc_base + self._voc.shape[1]
        if hi > done:
            self._bridge(done, hi)
        return self._voc[:, lo - self._voc_base : hi - self._voc_base]

    def _bridge(self, start: int, stop: int) -> None:
        positions = self._geo.decoder_positions(stop - start, first=start)
        d0 = math.floor(positions[0])
        d1 = math.floor(positions[-1]) + 2  # the bridge interpolates frames i and i + 1
        self._decode_until(d1)
        if d1 > self._dec_base + self._weight.size:
            raise ValueError(f"decoder frame {d1 - 1} is past the end of the trajectory")
        acc = self._acc[:, d0 - self._dec_base : d1 - self._dec_base]
        weight = self._weight[d0 - self._dec_base : d1 - self._dec_base]
        mel = np.clip((acc / np.maximum(weight, 1e-8)).astype(np.float32), 0.0, MAX_LOG1P_MEL)
        at = (positions - d0).astype(np.float32)
        if self._pass_through:
            bridged = pass_through_bridge(mel, at)
        else:
            bridged = self._runner.bridge(mel[None], at)[0]
        self._voc = np.concatenate([self._voc, bridged], axis=1)
        self._dec_used = max(self._dec_used, d1)
        # Decoder frames before the next vocoder frame's first source frame are done with.
        keep = math.floor(self._geo.decoder_positions(1, first=stop)[0])
        drop = max(0, min(keep, self._dec_used) - self._dec_base)
        if drop:
            self._acc = self._acc[:, drop:]
            self._weight = self._weight[drop:]
            self._dec_base += drop

    def release(self, before: int) -> None:
        """Vocoder frames below ``before`` will not be asked for again: drop them."""
        drop = min(before - self._voc_base, self._voc.shape[1])
        if drop > 0:
            self._voc = self._voc[:, drop:]
            self._voc_base += drop

    def steer(
        self, target: np.ndarray | None, evolution: float, transition_frames: float, salt: int
    ) -> None:
        """Bend the trajectory toward ``target`` from the first unused decoder frame on,
        gliding over ``transition_frames`` decoder frames (see :meth:`LatentPath.steer`)."""
        if not isinstance(self.path, LatentPath):
            raise TypeError("a timeline source is steered through its path's retarget")
        step = self._hop / self._sub
        if target is not None or self.path.steered:
            self.grid, self._grid_m = ChunkGrid(self._chunk_frames, self._sub, self._dec_used), 0
        self.path.steer(target, evolution, max(1, math.ceil(transition_frames / step)), salt)

    @property
    def first_frame(self) -> int:
        """The first vocoder frame still held (frames below it were released)."""
        return self._voc_base

    @property
    def buffered_frames(self) -> int:
        """Decoder plus vocoder frames held now (bounded for an open-ended stream)."""
        return int(self._weight.size + self._voc.shape[1])


def anchor_chunks(model: ModelSpec, chunk_frames: int) -> int:
    """Chunks between two slider anchors: about :data:`ANCHOR_S` of audio, as the app spaces
    them (chunks start half a chunk apart)."""
    geo = model.geometry
    chunk_hop_s = (chunk_frames // 2) * geo.decoder_hop / geo.decoder_rate
    return max(1, round(ANCHOR_S / chunk_hop_s))


def seeds(params: GenerationParams) -> list[int]:
    """One trajectory seed per independent channel (dual-seed: seed and seed + 1)."""
    return [params.seed] + ([params.seed + 1] if params.spatial is Spatial.DUAL_SEED else [])


def mel_source(
    runner: Runner,
    model: ModelSpec,
    params: GenerationParams,
    seed: int,
    stats: PipelineStats,
    max_chunks: int | None = None,
) -> MelSource:
    """The mel of ``params``' trajectory for ``seed`` (``max_chunks`` None: open-ended)."""
    chunk_frames = model.chunk_frames_for(params.chunk_duration_s)
    path = LatentPath(
        params.mode,
        seed,
        model.latent_dim,
        params.latent,
        params.evolution_amount,
        params.steps_between,
        anchor_chunks=anchor_chunks(model, chunk_frames),
    )
    return MelSource(
        runner, model, path, chunk_frames, params.steps_between, stats, max_chunks=max_chunks
    )


def pass_through_bridge(mel: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The bridge of a vocoder trained on the decoder's own mel, as the bundle's bridge graph
    computes it (``export/bridge.py`` ``DecoderMelPassThrough``, float32): frames at
    fractional ``positions`` interpolated linearly between their two neighbours. On the
    decoder's own grid every position is whole, so each output frame is a decoder frame. It
    runs here rather than as a graph: a graph run per block cost ~8 % of a per-model
    vocoder's serving."""
    n = mel.shape[-1]
    base = np.floor(positions)
    frac = (positions - base).astype(np.float32)
    i0 = np.clip(base.astype(np.int64), 0, n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    return (mel[:, i0] * (np.float32(1.0) - frac) + mel[:, i1] * frac).astype(np.float32)
