"""A generation request as plain data, and its validation against the model and limits."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from distill_serve.audio import Encoding
from distill_serve.codecs import (
    DEFAULT_FLAC_BITS,
    DEFAULT_OPUS_BITRATE,
    FLAC_BITS,
    OPUS_BITRATES,
    OPUS_RATES,
)
from distill_serve.server.pipeline.model import ModelSpec


class ChunkMode(enum.Enum):
    CROSSFADE = "crossfade"
    LATENT_INTERP = "latent_interp"
    SLIDER = "slider"


class Spatial(enum.Enum):
    MONO = "mono"
    STEREO_MID_SIDE = "stereo"
    DUAL_SEED = "dual_seed"
    #: the Distill app's stereo: Haas delay, mid/side width, depth echo
    STEREO_HAAS = "haas"


DEFAULT_STEPS_BETWEEN = 3
#: (lowest, highest, default) stereo width of each mode; the other modes take [0, 2] and
#: ignore it.
STEREO_WIDTH = {
    Spatial.STEREO_MID_SIDE: (0.0, 2.0, 1.0),
    Spatial.STEREO_HAAS: (0.0, 1.5, 0.7),  # the Distill app's range and default
}
OTHER_WIDTH = (0.0, 2.0, 1.0)
#: Depth of the Distill app's stereo when a request says nothing (the app's default).
DEFAULT_STEREO_DEPTH = 0.5
#: How far slider mode's anchors stray from the slider setting when a request says nothing
#: (the Distill app's default).
DEFAULT_EVOLUTION = 0.5


class InvalidRequest(ValueError):
    """A request the server refuses; ``field`` names the offending request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Limits:
    """Server-side request limits (live sessions count against ``max_concurrent`` too;
    ``max_concurrent`` 0: 4, or the engines' live capacity if larger, as it is now)."""

    max_duration_s: float = 60.0
    max_concurrent: int = 4
    #: generations one model may run at once (0: only the server-wide limit)
    max_concurrent_per_model: int = 0
    max_steps_between: int = 16
    #: live sessions (GenerateLive): longest session, how long the server waits for a client
    #: that reads no audio, and the lookahead range a client may ask for
    max_live_s: float = 3600.0
    live_idle_timeout_s: float = 30.0
    #: streams and live sessions: how far (seconds) a client may fall behind reading its
    #: audio in real time before the call is ended (server/api/send_budget.py)
    send_budget_s: float = 5.0
    #: requests that find every slot taken wait in turn (server/api/queue.py): at most
    #: ``max_waiting`` per model (0: refuse at once), each for at most ``max_wait_s``
    max_waiting: int = 32
    max_wait_s: float = 5.0
    min_lookahead_s: float = 0.05
    max_lookahead_s: float = 2.0


@dataclass(frozen=True)
class GenerationParams:
    """A validated request.

    ``latent`` is the slider-mode start vector (already mapped from slider positions).
    """

    mode: ChunkMode
    duration_s: float
    seed: int
    sample_rate: int
    encoding: Encoding
    spatial: Spatial
    stereo_width: float
    steps_between: int
    evolution_amount: float
    latent: np.ndarray | None
    chunk_duration_s: float
    #: Opus: the target bitrate (bit/s); FLAC: bits per sample; 0 for the PCM encodings
    bitrate_bps: int = 0
    bits_per_sample: int = 0
    #: depth of :attr:`Spatial.STEREO_HAAS` (0 elsewhere)
    stereo_depth: float = 0.0
    #: slider mode from slider positions: the positions given, ``(index, position)`` (empty:
    #: every slider at 0); None when a latent was given or in the other modes
    sliders: tuple[tuple[int, int], ...] | None = None

    @property
    def channels(self) -> int:
        return 1 if self.spatial is Spatial.MONO else 2

    @property
    def total_samples(self) -> int:
        """Frames per channel of the result: exactly ``round(duration_s * sample_rate)``."""
        return max(1, round(self.duration_s * self.sample_rate))


@dataclass(frozen=True)
class RawRequest:
    """A request as the API gave it, before validation (optional fields may be None)."""

    mode: ChunkMode | None
    duration_s: float
    seed: int | None
    sample_rate: int
    encoding: Encoding
    spatial: Spatial
    stereo_width: float | None = None
    steps_between: int | None = None
    evolution_amount: float | None = None
    latent: list[float] | None = None
    slider_positions: list[tuple[int, int]] | None = None
    chunk_duration_s: float | None = None
    bitrate_bps: int | None = None
    bits_per_sample: int | None = None
    stereo_depth: float | None = None


def _finite(field: str, value: float) -> float:
    if not math.isfinite(value):
        raise InvalidRequest(field, f"must be a finite number, got {value}")
    return value


def validate(
    raw: RawRequest,
    model: ModelSpec,
    limits: Limits,
    fallback_seed: int,
    open_ended: bool = False,
    unary: bool = False,
) -> GenerationParams:
    """Check every field against the model and limits; raise :class:`InvalidRequest`.

    ``open_ended`` (live sessions): ``duration_s`` must be 0, the session runs until stopped.
    ``unary`` (one whole reply): FLAC, a file format, is only offered there.
    """
    if raw.mode is None:
        raise InvalidRequest("mode", "set a chunk mode: crossfade, latent_interp or slider")
    duration = _finite("duration_s", raw.duration_s)
    if open_ended:
        if duration != 0:
            raise InvalidRequest(
                "duration_s",
                f"live sessions are open-ended: leave it at 0 and send stop, got {duration:g}",
            )
    elif not 0 < duration <= limits.max_duration_s:
        raise InvalidRequest(
            "duration_s", f"must be in (0, {limits.max_duration_s:g}] seconds, got {duration:g}"
        )
    rate = raw.sample_rate or model.default_sample_rate
    if raw.encoding is Encoding.OPUS and not raw.sample_rate:
        rate = max(OPUS_RATES)  # the model's own rate is rarely an Opus rate
    if rate not in model.sample_rates:
        raise InvalidRequest(
            "sample_rate", f"{rate} Hz is not offered; choose one of {list(model.sample_rates)}"
        )
    bitrate, bits = _codec_settings(raw, rate, unary)
    width, depth = _stereo_settings(raw)
    steps = DEFAULT_STEPS_BETWEEN if raw.steps_between is None else raw.steps_between
    if raw.mode is ChunkMode.LATENT_INTERP and not 0 <= steps <= limits.max_steps_between:
        raise InvalidRequest(
            "steps_between", f"must be in [0, {limits.max_steps_between}], got {steps}"
        )
    evolution = _finite(
        "evolution_amount",
        DEFAULT_EVOLUTION if raw.evolution_amount is None else raw.evolution_amount,
    )
    if not 0.0 <= evolution <= 1.0:
        raise InvalidRequest("evolution_amount", f"must be in [0, 1], got {evolution:g}")
    chunk_s = _finite(
        "chunk_duration_s",
        model.chunk_duration_s if raw.chunk_duration_s is None else raw.chunk_duration_s,
    )
    lo, hi = model.min_chunk_duration_s, model.max_chunk_duration_s
    if not lo - 1e-9 <= chunk_s <= hi + 1e-9:
        raise InvalidRequest(
            "chunk_duration_s", f"must be in [{lo:.3f}, {hi:.3f}] s, got {chunk_s:g}"
        )
    latent, sliders = _slider_input(raw, model)
    seed = fallback_seed if raw.seed is None else raw.seed
    if not 0 <= seed < 2**63:
        raise InvalidRequest("seed", f"must be in [0, 2^63), got {seed}")
    return GenerationParams(
        mode=raw.mode,
        duration_s=duration,
        seed=seed,
        sample_rate=rate,
        encoding=raw.encoding,
        spatial=raw.spatial,
        stereo_width=width,
        steps_between=steps if raw.mode is ChunkMode.LATENT_INTERP else 0,
        evolution_amount=evolution,
        latent=latent,
        chunk_duration_s=chunk_s,
        bitrate_bps=bitrate,
        bits_per_sample=bits,
        stereo_depth=depth,
        sliders=sliders,
    )


def check_width(spatial: Spatial, width: float) -> float:
    """``width`` if it lies in ``spatial``'s range; else :class:`InvalidRequest`."""
    lo, hi, _ = STEREO_WIDTH.get(spatial, OTHER_WIDTH)
    width = _finite("stereo_width", width)
    if not lo <= width <= hi:
        raise InvalidRequest("stereo_width", f"must be in [{lo:g}, {hi:g}], got {width:g}")
    return width


def _stereo_settings(raw: RawRequest) -> tuple[float, float]:
    """``(stereo_width, stereo_depth)`` of the request's spatial mode."""
    default = STEREO_WIDTH.get(raw.spatial, OTHER_WIDTH)[2]
    width = check_width(raw.spatial, default if raw.stereo_width is None else raw.stereo_width)
    if raw.spatial is not Spatial.STEREO_HAAS:
        if raw.stereo_depth is not None:
            raise InvalidRequest("stereo_depth", "applies to spatial haas only; leave it unset")
        return width, 0.0
    depth = _finite(
        "stereo_depth", DEFAULT_STEREO_DEPTH if raw.stereo_depth is None else raw.stereo_depth
    )
    if not 0.0 <= depth <= 1.0:
        raise InvalidRequest("stereo_depth", f"must be in [0, 1], got {depth:g}")
    return width, depth


def _codec_settings(raw: RawRequest, rate: int, unary: bool) -> tuple[int, int]:
    """``(bitrate_bps, bits_per_sample)`` of the request's encoding; 0 where it has none."""
    if raw.bitrate_bps is not None and raw.encoding is not Encoding.OPUS:
        raise InvalidRequest("bitrate_bps", "applies to OPUS only; leave it unset")
    if raw.bits_per_sample is not None and raw.encoding is not Encoding.FLAC:
        raise InvalidRequest("bits_per_sample", "applies to FLAC only; leave it unset")
    if raw.encoding is Encoding.OPUS:
        if rate not in OPUS_RATES:
            raise InvalidRequest(
                "sample_rate",
                f"Opus runs at {', '.join(map(str, OPUS_RATES))} Hz only, not {rate}; "
                "ask for one of these or another encoding",
            )
        bitrate = DEFAULT_OPUS_BITRATE if raw.bitrate_bps is None else raw.bitrate_bps
        lo, hi = OPUS_BITRATES
        if not lo <= bitrate <= hi:
            raise InvalidRequest("bitrate_bps", f"must be in [{lo}, {hi}] bit/s, got {bitrate}")
        return bitrate, 0
    if raw.encoding is Encoding.FLAC:
        if not unary:
            raise InvalidRequest(
                "encoding",
                "FLAC is a file format, offered by unary Generate only; "
                "stream with OPUS or a PCM encoding",
            )
        bits = DEFAULT_FLAC_BITS if raw.bits_per_sample is None else raw.bits_per_sample
        if bits not in FLAC_BITS:
            raise InvalidRequest("bits_per_sample", f"FLAC here is 16 or 24 bit, got {bits}")
        return 0, bits
    return 0, 0


def check_latent(values: list[float], model: ModelSpec) -> np.ndarray:
    """A latent vector from the API: ``latent_dim`` finite values within [-1000, 1000]."""
    z = np.asarray(values, dtype=np.float64)
    if z.shape != (model.latent_dim,):
        raise InvalidRequest("latent", f"needs exactly {model.latent_dim} values, got {z.size}")
    if not np.all(np.isfinite(z)):
        raise InvalidRequest("latent", "holds NaN or infinite values")
    if np.max(np.abs(z)) > 1e3:
        raise InvalidRequest("latent", "values must be within [-1000, 1000]")
    return z.astype(np.float32)


def check_slider_positions(pairs: list[tuple[int, int]], model: ModelSpec) -> dict[int, int]:
    """``[(index, position)]`` from the API -> ``{index: position}``, each checked."""
    sliders = model.sliders
    if sliders is None:
        raise InvalidRequest(
            "sliders", "this model has no slider analysis; send a latent vector instead"
        )
    positions: dict[int, int] = {}
    for index, position in pairs:
        if not 0 <= index < sliders.count:
            raise InvalidRequest(
                "sliders", f"index {index} does not exist; this model has {sliders.count} sliders"
            )
        if not -sliders.max_position <= position <= sliders.max_position:
            raise InvalidRequest(
                "sliders",
                f"slider {index} ({sliders.labels[index]}) position {position} is outside "
                f"[{-sliders.max_position}, {sliders.max_position}]",
            )
        if index in positions:
            raise InvalidRequest("sliders", f"slider {index} is set twice")
        positions[index] = position
    return positions


def _slider_input(
    raw: RawRequest, model: ModelSpec
) -> tuple[np.ndarray | None, tuple[tuple[int, int], ...] | None]:
    """Slider mode's start latent, and the slider positions it came from (``(index,
    position)`` in index order; empty: every slider at 0; None: a latent was given, or
    another mode)."""
    given = raw.latent is not None or raw.slider_positions is not None
    if raw.mode is not ChunkMode.SLIDER:
        if given:
            raise InvalidRequest("slider_input", "a latent or slider positions need mode slider")
        return None, None
    if raw.latent is not None:
        return check_latent(raw.latent, model), None
    if raw.slider_positions is None:
        if model.sliders is None:
            raise InvalidRequest(
                "slider_input", "mode slider needs a latent vector (this model has no sliders)"
            )
        return model.sliders.latent({}), ()  # every slider at 0: the app's starting point
    positions = check_slider_positions(raw.slider_positions, model)  # refuses a model without
    assert model.sliders is not None
    return model.sliders.latent(positions), tuple(sorted(positions.items()))
