"""Live sessions: an open-ended generation steered while it plays (pure: no gRPC, no clock).

A :class:`LiveSession` renders fixed-size vocoder blocks from open-ended
:class:`~distill_serve.server.pipeline.mel.MelSource` trajectories with the same
:class:`~distill_serve.server.pipeline.render.BlockRenderer` as fixed-length requests, so with no
control changes it plays the audio of a fixed-length request with the same settings.

A control (:class:`LiveControl`) takes effect in the next block: a new latent target bends
the trajectory from the first decoder frame no audio has used yet (no frame already heard
changes, so there is no seam), reached over the chunk crossfade plus ``transition_s``.
:class:`Pacer` holds the server at most ``lookahead`` ahead of real time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from distill_serve.server.pipeline.dsp import Block, fade_out
from distill_serve.server.pipeline.mel import mel_source, seeds
from distill_serve.server.pipeline.model import ModelSpec
from distill_serve.server.pipeline.render import NORMALISER_SEGMENT_FRAMES, BlockRenderer
from distill_serve.server.pipeline.request import (
    STEREO_WIDTH,
    GenerationParams,
    InvalidRequest,
    Limits,
    check_latent,
    check_slider_positions,
    check_width,
)
from distill_serve.server.pipeline.runner import LIVE, PipelineStats, Runner

DEFAULT_LOOKAHEAD_S = 0.3
#: Length of the fade-out that ends a session.
FADE_OUT_S = 0.05
#: Shortest glide of a stereo-width change (a step in width would click).
MIN_WIDTH_GLIDE_S = 0.02
MAX_TRANSITION_S = 60.0
MAX_PLAYOUT_DELAY_S = 10.0


def live_block_frames(lookahead_s: float, model: ModelSpec) -> int:
    """Vocoder frames per live block: two normaliser segments (16 frames, ~0.19 s at 44.1 kHz
    and hop 512), or one when the lookahead is shorter than two blocks' worth. Smaller
    blocks answer controls sooner but cost more: each carries the vocoder's context frames
    on both sides (2 x 20 frames on the demo and full models)."""
    seg = NORMALISER_SEGMENT_FRAMES
    frame_s = model.geometry.vocoder_hop / model.vocoder_rate
    return seg if lookahead_s < 2 * 2 * seg * frame_s else 2 * seg


def check_lookahead(value: float | None, limits: Limits) -> float:
    """The session's lookahead in seconds (None: the default), within the server's bounds."""
    lookahead = DEFAULT_LOOKAHEAD_S if value is None else value
    if not math.isfinite(lookahead) or not (
        limits.min_lookahead_s <= lookahead <= limits.max_lookahead_s
    ):
        raise InvalidRequest(
            "lookahead_s",
            f"must be in [{limits.min_lookahead_s:g}, {limits.max_lookahead_s:g}] s, "
            f"got {lookahead:g}",
        )
    return lookahead


def check_playout_delay(value: float | None) -> float:
    """The client's playout delay in seconds (None: 0)."""
    if value is None:
        return 0.0
    return _in_range("playout_delay_s", value, 0.0, MAX_PLAYOUT_DELAY_S)


@dataclass(frozen=True)
class RawControl:
    """A control message as the API gave it (None: not set)."""

    sequence: int
    latent: list[float] | None = None
    slider_positions: list[tuple[int, int]] | None = None
    evolution_amount: float | None = None
    stereo_width: float | None = None
    transition_s: float | None = None
    stop: bool = False
    position: int | None = None


@dataclass(frozen=True)
class LiveControl:
    """A checked control. ``sliders`` holds only the sliders the message named. A merged
    control (``controls.py``) may hold both a latent and slider moves: ``latent_last`` says
    the latent came after the moves and is the target."""

    sequence: int
    latent: np.ndarray | None
    sliders: dict[int, int] | None
    evolution_amount: float | None
    stereo_width: float | None
    transition_s: float
    stop: bool
    latent_last: bool = False
    #: a timeline session's position for it (None: the next block)
    position: int | None = None


def _in_range(field: str, value: float, lo: float, hi: float) -> float:
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidRequest(field, f"must be in [{lo:g}, {hi:g}], got {value:g}")
    return value


def check_control(
    raw: RawControl, model: ModelSpec, params: GenerationParams, last_sequence: int
) -> LiveControl:
    """Check a control against the model, the session and the previous sequence number."""
    if raw.sequence <= last_sequence:
        raise InvalidRequest(
            "sequence",
            f"must increase with every control (last was {last_sequence}), got {raw.sequence}",
        )
    width = raw.stereo_width
    if width is not None:
        if params.spatial not in STEREO_WIDTH:
            raise InvalidRequest("stereo_width", "needs a stereo session (spatial stereo or haas)")
        width = check_width(params.spatial, width)
    evolution = raw.evolution_amount
    if evolution is not None:
        evolution = _in_range("evolution_amount", evolution, 0.0, 1.0)
    transition = raw.transition_s
    if transition is not None:
        transition = _in_range("transition_s", transition, 0.0, MAX_TRANSITION_S)
    return LiveControl(
        sequence=raw.sequence,
        latent=None if raw.latent is None else check_latent(raw.latent, model),
        sliders=(
            None
            if raw.slider_positions is None
            else check_slider_positions(raw.slider_positions, model)
        ),
        evolution_amount=evolution,
        stereo_width=width,
        transition_s=transition or 0.0,
        stop=raw.stop,
        position=raw.position,
    )


@dataclass(frozen=True)
class LiveBlock:
    """Audio ``(channels, n)`` at the output rate, the last control sequence it reflects, and
    where it was computed (the provider, the session's out-of-memory fallbacks so far);
    ``position``: a timeline session's position of its first sample (0 otherwise)."""

    audio: np.ndarray
    control_sequence: int
    provider: str = ""
    fallbacks: int = 0
    position: int = 0


class LiveSession:
    """An open-ended generation: :meth:`next_block` until :meth:`finish`, steered by
    :meth:`apply`. Not thread-safe: call its methods from one thread at a time.

    ``sliders`` are the start message's slider positions (the others start at 0); slider
    controls move them.
    """

    def __init__(
        self,
        runner: Runner,
        model: ModelSpec,
        params: GenerationParams,
        lookahead_s: float,
        sliders: dict[int, int] | None = None,
        stats: PipelineStats | None = None,
    ) -> None:
        self.params = params
        self.model = model
        self.stats = stats if stats is not None else PipelineStats()
        sources = [mel_source(runner, model, params, s, self.stats) for s in seeds(params)]
        self.block_frames = live_block_frames(lookahead_s, model)
        self._renderer = BlockRenderer(
            runner, model, params, sources, self.stats, None, step_frames=self.block_frames
        )
        self._next = 0  # first vocoder frame of the next block
        self._sliders = dict(sliders or {})
        self._evolution = params.evolution_amount
        self.control_sequence = 0
        self.samples = 0  # output frames rendered so far
        self.finished = False

    @property
    def seconds(self) -> float:
        """Audio rendered so far, in seconds."""
        return self.samples / self.params.sample_rate

    @property
    def buffered_frames(self) -> int:
        """Mel frames the session holds (stays bounded however long it runs)."""
        return sum(s.buffered_frames for s in self._renderer.sources)

    def apply(self, control: LiveControl) -> None:
        """Take ``control`` into account from the next block on."""
        model = self.model
        target = control.latent
        if control.sliders is not None and model.sliders is not None:
            self._sliders.update(control.sliders)
            if not (control.latent_last and control.latent is not None):
                target = model.sliders.latent(self._sliders)
        if control.evolution_amount is not None:
            self._evolution = control.evolution_amount
        if target is not None or control.evolution_amount is not None:
            geo = model.geometry
            frames = control.transition_s * geo.decoder_rate / geo.decoder_hop
            for source in self._renderer.sources:
                source.steer(target, self._evolution, frames, control.sequence)
        stereo = self._renderer.stereo
        if control.stereo_width is not None and stereo is not None:
            glide = max(control.transition_s, MIN_WIDTH_GLIDE_S)
            stereo.set_width(control.stereo_width, round(glide * model.vocoder_rate))
        self.control_sequence = control.sequence

    def _block(self, frames: int) -> Block:
        start, ctx = self._next, self.model.context_frames
        self._next += frames
        return Block(start, start + frames, max(0, start - ctx), start + frames + ctx)

    @property
    def vocoder_path(self) -> str:
        return self._renderer.vocoder_path

    @property
    def startup_blocks(self) -> int:
        """The first blocks that cost more than the rest: on the stream path the first one
        (it feeds the stream's latency frames as well) and every block of the head
        (BigVGAN's replicate-padded start, which the whole-clip graph vocodes too); none on
        the block path, whose blocks all cost the same."""
        spec = self.model.stream
        if self.vocoder_path != "stream" or spec is None:
            return 0
        return max(1, math.ceil(spec.head_frames / self.block_frames))

    def next_block(self, deadline: float | None = None) -> LiveBlock:
        """Render the next block, needed by ``deadline`` (``time.monotonic`` seconds; None:
        now)."""
        if self.finished:
            raise RuntimeError("the live session has finished")
        out = self._renderer.render(self._block(self.block_frames), deadline, LIVE)
        self.samples += out.audio.shape[1]
        return LiveBlock(out.audio, self.control_sequence, out.provider, out.fallbacks)

    def finish(self, deadline: float | None = None) -> LiveBlock:
        """The last block: a short fade-out, then the resampler's tail. Ends the session."""
        rate = self.model.vocoder_rate
        fade = fade_out(max(1, round(FADE_OUT_S * rate)))
        frames = math.ceil(fade.size / self.model.geometry.vocoder_hop)
        last = self._renderer.render(self._block(frames), deadline, LIVE, fade=fade)
        tail = self._renderer.flush(self.params.channels)
        audio = np.concatenate([last.audio, tail.audio], axis=1)
        self.samples += audio.shape[1]
        self.finished = True
        return LiveBlock(
            audio.astype(np.float32), self.control_sequence, tail.provider, tail.fallbacks
        )


class Pacer:
    """Keeps a stream at most ``lookahead_s`` of audio ahead of real time, measured from the
    moment its first block was sent, or from ``start`` (the client's playout start, when it
    says). Times are the caller's clock, in seconds."""

    def __init__(self, lookahead_s: float, start: float | None = None) -> None:
        self.lookahead_s = lookahead_s
        self._t0: float | None = start
        self._sent_s = 0.0
        #: when the last block was sent (None before the first)
        self.last_sent: float | None = None

    def ahead(self, now: float) -> float:
        """Seconds of audio sent beyond real time (0 before the first block)."""
        return 0.0 if self._t0 is None else self._sent_s - (now - self._t0)

    def delay(self, now: float) -> float:
        """How long to wait before making the next block (never before the first: a session
        whose client starts playing later still starts at once, its first block may cost the
        most)."""
        if self._sent_s == 0.0:
            return 0.0
        return max(0.0, self.ahead(now) - self.lookahead_s)

    def underrun_in(self, now: float) -> float:
        """Seconds until the audio sent so far runs out for a listener in real time (0
        before the first block: it is needed at once)."""
        return max(0.0, self.ahead(now))

    def sent(self, seconds: float, now: float) -> None:
        """Record a block of ``seconds`` of audio sent at ``now``."""
        if self._t0 is None:
            self._t0 = now
        self._sent_s += seconds
        self.last_sent = now
