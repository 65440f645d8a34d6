"""The block renderer: vocoder blocks of one generation -> output audio.

Fixed-length requests (:mod:`distill_serve.server.pipeline.generate`) and live sessions
(:mod:`distill_serve.server.pipeline.live`) render with the same :class:`BlockRenderer` from
the same :class:`~distill_serve.server.pipeline.mel.MelSource` s, so with no control changes a
live session plays the audio of a fixed-length request with the same settings.
"""

from __future__ import annotations

import numpy as np

from distill_serve.server.pipeline.dsp import (
    AntiAlias,
    Block,
    CausalPeakNormaliser,
    fit_window,
)
from distill_serve.server.pipeline.mel import MelSource
from distill_serve.server.pipeline.model import ModelSpec
from distill_serve.server.pipeline.request import GenerationParams, Spatial
from distill_serve.server.pipeline.resample import StreamingResampler
from distill_serve.server.pipeline.runner import REST, PipelineStats, RenderedBlock, Runner
from distill_serve.server.pipeline.spatial import HaasStereo, MidSide
from distill_serve.server.pipeline.vocoder_stream import StreamVocoder

NORMALISER_RAMP_S = 0.02
#: The normaliser's segment in vocoder frames: every block but a request's last is a multiple
#: of it (fixed-length blocks are 16, 32, ... 256 frames, live blocks 8 or 16), so a live
#: session and a fixed-length request get the same gains.
NORMALISER_SEGMENT_FRAMES = 8
#: A timeline session's normaliser holds a peak this long (its finite memory, ``dsp.py``).
TIMELINE_PEAK_HOLD_S = 1.0


class BlockRenderer:
    """Turns vocoder blocks of one generation into output audio.

    Order per block: vocode -> anti-alias -> spatial -> normalise -> (fade) -> resample.
    Every step keeps its state across blocks. The vocoder runs one of two ways, with the
    same audio: the streaming graph fed each frame once (:class:`StreamVocoder`, when the
    runner streams; ``step_frames`` per step, default the bundle's largest), or the
    whole-clip graph on each block with context frames on both sides.

    The renderer alone releases the sources' mel frames, once a block is out: as far as the
    vocoder that serves it (the stream's states, or the block path's context) no longer
    needs them.

    ``finite`` (timeline sessions): every stateful step in its finite-memory form, so the
    output from some point on depends only on a bounded stretch before it; ``start_frame``:
    the first block's first vocoder frame (a session primed from a later block). Such a
    session's resampler starts at the first sample from there that is a multiple of its
    ``orig`` (:attr:`output_start`), where a resampler fed from 0 is in the same phase.
    """

    def __init__(
        self,
        runner: Runner,
        model: ModelSpec,
        params: GenerationParams,
        sources: list[MelSource],
        stats: PipelineStats,
        total_frames: int | None,
        step_frames: int | None = None,
        start_frame: int = 0,
        finite: bool = False,
    ) -> None:
        self.sources = sources
        self._runner = runner
        spec = runner.stream_spec
        self._stream = (
            StreamVocoder(
                runner,
                model,
                spec,
                sources,
                total_frames,
                step_frames or max(spec.step_frames),
                start=start_frame,
            )
            if spec is not None
            else None
        )
        self._stats = stats
        self._hop = model.geometry.vocoder_hop
        self._total = total_frames  # None: open-ended (live)
        # Frames kept behind a block: its context, or a whole bucket when windows are widened.
        self._keep = max(model.context_frames, *runner.vocoder_buckets, 0)
        rate = model.vocoder_rate
        self._antialias = AntiAlias(
            rate, model.antialias_cutoff_hz, model.antialias_order, len(sources), finite
        )
        self.stereo = stereo_maker(params, rate, finite)
        segment = NORMALISER_SEGMENT_FRAMES * self._hop
        self._normalise = CausalPeakNormaliser(
            model.peak_target,
            int(NORMALISER_RAMP_S * rate),
            segment=segment,
            hold=-(-round(TIMELINE_PEAK_HOLD_S * rate) // segment) if finite else 0,
            position=start_frame * self._hop,
        )
        self._resampler = (
            StreamingResampler(
                runner.polyphase(params.sample_rate),
                model.resamplers[params.sample_rate],
                params.channels,
            )
            if params.sample_rate != rate
            else None
        )
        start = start_frame * self._hop
        if self._resampler is not None:
            geo = model.resamplers[params.sample_rate]
            aligned = -(-start // geo.orig) * geo.orig
            self._resample_skip = aligned - start
            #: the output position (at the output rate) of the first sample rendered
            self.output_start = aligned // geo.orig * geo.new
        else:
            self._resample_skip = 0
            self.output_start = start

    def render(
        self,
        block: Block,
        deadline: float | None = None,
        rank: int = REST,
        fade: np.ndarray | None = None,
    ) -> RenderedBlock:
        """Audio ``(channels, n)`` of ``block`` at the output rate (a resampler holds back a
        few samples until the next block or :meth:`flush`). ``deadline`` (``time.monotonic``
        seconds; None: now) says when the block's audio is needed and ``rank`` what it is
        (``runner.py``: a live block, a stream's first audio, the rest); the step scheduler
        serves the most urgent steps first. ``fade`` multiplies the block's first
        ``len(fade)`` samples at the vocoder rate and drops the rest."""
        if self._stream is not None:
            audio = self._stream.audio(block.start, block.stop, deadline, rank)
            needed_from = self._stream.needed_from(block.stop)
        else:
            audio = self._block_audio(block)
            needed_from = block.stop - self._keep
        for s in self.sources:
            s.release(needed_from)
        self._stats.vocoder_blocks += 1
        if not np.isfinite(audio).all():  # (a scan is cheaper than nan_to_num's copy)
            audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
        audio = self._antialias(audio)
        if self.stereo is not None:
            audio = self.stereo(audio)
        audio = self._normalise(audio)
        if fade is not None:
            audio = audio[:, : fade.size] * fade[: audio.shape[1]]
        if self._resample_skip:
            skip, self._resample_skip = min(self._resample_skip, audio.shape[1]), 0
            audio = audio[:, skip:]
        if self._resampler is not None:
            audio = self._resampler.push(audio)
        return RenderedBlock(audio, self._runner.provider, self._runner.fallbacks)

    @property
    def vocoder_path(self) -> str:
        return "stream" if self._stream is not None else "block"

    def _block_audio(self, block: Block) -> np.ndarray:
        """The whole-clip graph on the block's window (context on both sides)."""
        hop = self._hop
        lo, hi = block.lo, block.hi
        if buckets := self._runner.vocoder_buckets:
            first = max(s.first_frame for s in self.sources)
            lo, hi = fit_window(lo, hi, first, self._total, buckets)
        return np.stack(
            [
                self._runner.vocode(s.vocoder_frames(lo, hi)[None])[
                    (block.start - lo) * hop : (block.stop - lo) * hop
                ]
                for s in self.sources
            ]
        )

    def flush(self, channels: int) -> RenderedBlock:
        """End of signal: the resampler's last samples (none without a resampler)."""
        if self._resampler is None:
            audio = np.zeros((channels, 0), np.float32)
        else:
            audio = self._resampler.flush()
        return RenderedBlock(audio, self._runner.provider, self._runner.fallbacks)


def stereo_maker(
    params: GenerationParams, rate: int, finite: bool = False
) -> MidSide | HaasStereo | None:
    """The stage that makes a mono signal stereo (None: mono, or stereo from two seeds)."""
    if params.spatial is Spatial.STEREO_MID_SIDE:
        return MidSide(params.stereo_width, finite)
    if params.spatial is Spatial.STEREO_HAAS:
        return HaasStereo(params.stereo_width, params.stereo_depth, rate)
    return None
