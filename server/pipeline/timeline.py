"""Timeline sessions: a live session whose audio is a function of the timeline position.

A :class:`TimelineSession` starts at a position (output samples at its rate) and takes each
control at a position. Its audio from position ``t`` on depends only on the seed, the
mode's settings and the controls in force around ``t``, never on where playback started,
how the network timed the controls, or how fast it renders (``docs/api.md``, timeline
sessions):

* blocks lie on one grid from position 0 (``block_frames`` vocoder frames each), and a
  control at ``p`` takes effect in the block that holds ``p``: its latent from the first
  decoder chunk no earlier block reads (:class:`~.timeline_path.TimelinePath`), its width
  at that block's first sample, its stop there;
* every stateful stage runs in its finite-memory form (``BlockRenderer(finite=True)``), so
  a session started at ``t`` is *primed*: it renders, and drops, the blocks from a grid
  point far enough before ``t`` that every stage's state at ``t`` is the one a session
  played from 0 has there. On one machine the samples are bit-identical.

"The same automation" is the controls at the same positions. A session started at ``t``
knows only the values of its start message, which it takes as in force over the priming
stretch before ``t`` (:attr:`TimelineSession.priming_s`, about 2 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distill_serve.server.pipeline.live import (
    MIN_WIDTH_GLIDE_S,
    LiveBlock,
    LiveControl,
    LiveSession,
    live_block_frames,
)
from distill_serve.server.pipeline.mel import (
    ChunkGrid,
    MelSource,
    anchor_chunks,
    first_decoder_frame,
    seeds,
)
from distill_serve.server.pipeline.model import ModelSpec
from distill_serve.server.pipeline.render import (
    NORMALISER_RAMP_S,
    NORMALISER_SEGMENT_FRAMES,
    TIMELINE_PEAK_HOLD_S,
    BlockRenderer,
)
from distill_serve.server.pipeline.request import GenerationParams, InvalidRequest, Limits
from distill_serve.server.pipeline.runner import LIVE, PipelineStats, Runner
from distill_serve.server.pipeline.timeline_path import TimelinePath

#: How far ahead of the audio made so far a control may be scheduled.
MAX_AHEAD_S = 600.0
#: Controls scheduled and not yet reached, at most.
MAX_SCHEDULED = 1024


class PositionRefused(ValueError):
    """A control's position cannot be taken; the session plays on (``code``: the gRPC
    status name the client is told)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TimelineGrid:
    """Positions (output samples at ``rate``) against vocoder blocks of ``block_frames``."""

    rate: int
    vocoder_rate: int
    hop: int
    block_frames: int

    @property
    def block_samples(self) -> int:
        """A block's length at the vocoder rate."""
        return self.block_frames * self.hop

    def block_of(self, position: int) -> int:
        """The block that holds output sample ``position``."""
        return position * self.vocoder_rate // (self.rate * self.block_samples)

    def start_of(self, block: int) -> int:
        """The first output position at or after ``block``'s first sample."""
        return -(-block * self.block_samples * self.rate // self.vocoder_rate)


def check_start_position(value: int, params: GenerationParams, limits: Limits) -> int:
    """A timeline session's start: within the session's longest life."""
    if not 0 <= value <= round(limits.max_live_s * params.sample_rate):
        raise InvalidRequest(
            "start_position",
            f"must be in [0, {round(limits.max_live_s * params.sample_rate)}] samples "
            f"(Limits.max_live_s at {params.sample_rate} Hz), got {value}",
        )
    return value


class TimelineSession(LiveSession):
    """A live session addressed by timeline position (see the module's docstring).

    As :class:`LiveSession`, plus :meth:`schedule` (a control at a position), ``position``
    on every block, and :attr:`stop_due` (a stop's block has come: call :meth:`finish`).
    """

    def __init__(
        self,
        runner: Runner,
        model: ModelSpec,
        params: GenerationParams,
        lookahead_s: float,
        start_position: int,
        sliders: dict[int, int] | None = None,
        stats: PipelineStats | None = None,
    ) -> None:
        self.params, self.model = params, model
        self.stats = stats if stats is not None else PipelineStats()
        block_frames = live_block_frames(lookahead_s, model)
        self.block_frames = block_frames
        self.grid = TimelineGrid(
            params.sample_rate, model.vocoder_rate, model.geometry.vocoder_hop, block_frames
        )
        spec = runner.stream_spec
        latency = spec.latency_frames if spec is not None else 0
        head = spec.head_frames if spec is not None else 0
        ctx = model.context_frames
        first = self._priming_start(start_position, ctx + latency, head)
        source_start = max(0, first * block_frames - block_frames - 2 * ctx - latency)
        sources = [self._source(runner, s, source_start) for s in seeds(params)]
        self._renderer = BlockRenderer(
            runner,
            model,
            params,
            sources,
            self.stats,
            None,
            step_frames=block_frames,
            start_frame=first * block_frames,
            finite=True,
        )
        self._next = first * block_frames
        self._made = self._renderer.output_start  # position of the next sample made
        self.position = start_position  # position of the next sample handed out
        self.priming_s = (start_position - self._made) / params.sample_rate
        self._sliders = dict(sliders or {})
        self._last_position = start_position
        self._at_block: dict[int, list[LiveControl]] = {}
        self.stop_due = False
        self._stop_block: int | None = None
        self.control_sequence = 0
        self.samples = 0
        self.finished = False

    def _priming_start(self, start: int, vocoder_frames: int, head: int) -> int:
        """The first block to render: on the period, before ``start`` by the memory of every
        stage (or 0, where that reaches back into the stream's head)."""
        grid, rate = self.grid, self.model.vocoder_rate
        samples = sum(
            [
                2 * grid.block_samples + vocoder_frames * grid.hop,
                round(0.06 * rate),  # stereo: Haas delay + depth echo (at most 55 ms)
                4096,  # the anti-alias and all-pass filters' memory (under 1000 samples)
                # the normaliser: its held peak, its ramp, the segment in progress
                round((TIMELINE_PEAK_HOLD_S + NORMALISER_RAMP_S) * rate)
                + 2 * NORMALISER_SEGMENT_FRAMES * grid.hop,
                round(0.01 * rate),  # the resampler's kernel (under 200 input samples)
            ]
        )
        back = -(-samples // grid.block_samples)
        first = max(0, grid.block_of(start) - back)
        return 0 if first * self.block_frames <= head + vocoder_frames else first

    def _source(self, runner: Runner, seed: int, start_frame: int) -> MelSource:
        model, params = self.model, self.params
        chunk_frames = model.chunk_frames_for(params.chunk_duration_s)
        grid = ChunkGrid(chunk_frames, params.steps_between + 1)
        first_chunk = grid.first_covering(first_decoder_frame(model, start_frame))
        path = TimelinePath(
            params.mode,
            seed,
            model.latent_dim,
            params.latent,
            params.evolution_amount,
            params.steps_between,
            anchor_chunks=anchor_chunks(model, chunk_frames),
            first_chunk=first_chunk if start_frame else 0,
        )
        return MelSource(
            runner,
            model,
            path,
            chunk_frames,
            params.steps_between,
            self.stats,
            start_frame=start_frame,
            decoder_batch=1,
        )

    def schedule(self, control: LiveControl, position: int | None) -> None:
        """Take ``control`` at ``position`` (None: the next block). PositionRefused when it
        is in the past, before an earlier control's, or too far ahead."""
        grid = self.grid
        next_block = self._next // self.block_frames
        if position is None:
            position = max(self._last_position, grid.start_of(next_block))
        if grid.block_of(position) < next_block:
            raise PositionRefused(
                "OUT_OF_RANGE",
                f"position {position} is in the past: the server has made the audio up to "
                f"{grid.start_of(next_block)}; send controls at least the lookahead plus one "
                "block ahead of the position playing",
            )
        if position < self._last_position:
            raise PositionRefused(
                "INVALID_ARGUMENT",
                f"position {position} is before the previous control's ({self._last_position});"
                " send controls in timeline order",
            )
        if position > self._made + MAX_AHEAD_S * self.params.sample_rate:
            raise PositionRefused(
                "OUT_OF_RANGE",
                f"position {position} is more than {MAX_AHEAD_S:g} s ahead of the audio made "
                f"({self._made}); send it later",
            )
        if sum(len(v) for v in self._at_block.values()) >= MAX_SCHEDULED:
            raise PositionRefused(
                "RESOURCE_EXHAUSTED", f"{MAX_SCHEDULED} controls are already waiting"
            )
        block = grid.block_of(position)
        self._last_position = position
        self._retarget(control, block)
        self._at_block.setdefault(block, []).append(control)

    def apply(self, control: LiveControl) -> None:
        """A control with no position: from the next block on."""
        self.schedule(control, None)

    def _retarget(self, control: LiveControl, block: int) -> None:
        model = self.model
        centre = control.latent
        if control.sliders is not None and model.sliders is not None:
            self._sliders.update(control.sliders)
            if not (control.latent_last and control.latent is not None):
                centre = model.sliders.latent(self._sliders)
        if centre is None and control.evolution_amount is None:
            return
        geo = model.geometry
        # the first decoder frame the blocks before ``block`` never read (the bridge reads
        # two frames for the last vocoder frame they reach)
        reach = block * self.block_frames + model.context_frames
        frame = first_decoder_frame(model, reach - 1) + 2
        frames = control.transition_s * geo.decoder_rate / geo.decoder_hop
        for source in self._renderer.sources:
            path, grid = source.path, source.grid
            assert isinstance(path, TimelinePath)
            glide = max(1, math.ceil(frames * grid.sub / grid.hop))
            path.retarget(grid.at_or_after(frame), centre, control.evolution_amount, glide)

    def _take_block_controls(self, block: int) -> None:
        for control in self._at_block.pop(block, []):
            stereo = self._renderer.stereo
            if control.stereo_width is not None and stereo is not None:
                glide = max(control.transition_s, MIN_WIDTH_GLIDE_S)
                stereo.set_width(control.stereo_width, round(glide * self.model.vocoder_rate))
            self.control_sequence = control.sequence
            if control.stop:
                self._stop_block = block

    def next_block(self, deadline: float | None = None) -> LiveBlock:
        """The next block from :attr:`position` on (the first call primes: it renders and
        drops the blocks before the start)."""
        if self.finished:
            raise RuntimeError("the live session has finished")
        while True:
            block = self._next // self.block_frames
            self._take_block_controls(block)
            out = self._renderer.render(self._block(self.block_frames), deadline, LIVE)
            made, self._made = self._made, self._made + out.audio.shape[1]
            self.stop_due = self._stop_block is not None and self._stop_block <= block + 1
            if self._made > self.position:
                break
        audio = out.audio[:, self.position - made :]
        block_out = LiveBlock(
            audio, self.control_sequence, out.provider, out.fallbacks, position=self.position
        )
        self.position = self._made
        self.samples += audio.shape[1]
        return block_out

    def finish(self, deadline: float | None = None) -> LiveBlock:
        """The fade-out block (at the stop's block, or the next), then the resampler's tail."""
        position = self.position
        last = super().finish(deadline)
        self.position += last.audio.shape[1]
        return LiveBlock(
            last.audio, last.control_sequence, last.provider, last.fallbacks, position=position
        )
