"""Proto messages <-> plain params and records: the only place that maps the API's enums and
messages to the pipeline's and back. Pure functions; the servicer calls them."""

from __future__ import annotations

import time
from typing import Any

from distill_serve.audio import Encoding
from distill_serve.server.api.audio_out import Coded, Container, OpusStreamHeader, container_for
from distill_serve.server.models.entry import client_reason
from distill_serve.server.models.repository import ModelEntry, ModelState
from distill_serve.server.pipeline.live import RawControl
from distill_serve.server.pipeline.model import ModelSpec
from distill_serve.server.pipeline.request import (
    ChunkMode,
    GenerationParams,
    InvalidRequest,
    RawRequest,
    Spatial,
)
from distill_serve.server.pipeline.runner import PipelineStats
from distill_serve.v1 import distill_pb2 as pb

MODES = {
    pb.CHUNK_MODE_CROSSFADE: ChunkMode.CROSSFADE,
    pb.CHUNK_MODE_LATENT_INTERP: ChunkMode.LATENT_INTERP,
    pb.CHUNK_MODE_SLIDER: ChunkMode.SLIDER,
}
ENCODINGS = {
    pb.AUDIO_ENCODING_UNSPECIFIED: Encoding.PCM16,
    pb.AUDIO_ENCODING_PCM16: Encoding.PCM16,
    pb.AUDIO_ENCODING_PCM24: Encoding.PCM24,
    pb.AUDIO_ENCODING_FLOAT32: Encoding.FLOAT32,
    pb.AUDIO_ENCODING_FLAC: Encoding.FLAC,
    pb.AUDIO_ENCODING_OPUS: Encoding.OPUS,
}
ENCODING_ENUM = {v: k for k, v in ENCODINGS.items() if k != pb.AUDIO_ENCODING_UNSPECIFIED}
CONTAINERS = {
    pb.CONTAINER_UNSPECIFIED: None,
    pb.CONTAINER_RAW: Container.RAW,
    pb.CONTAINER_WAV: Container.WAV,
    pb.CONTAINER_FLAC: Container.FLAC,
    pb.CONTAINER_OGG: Container.OGG,
}
CONTAINER_ENUM = {v: k for k, v in CONTAINERS.items() if v is not None}
SPATIAL = {
    pb.SPATIAL_MODE_UNSPECIFIED: Spatial.MONO,
    pb.SPATIAL_MODE_MONO: Spatial.MONO,
    pb.SPATIAL_MODE_STEREO_MID_SIDE: Spatial.STEREO_MID_SIDE,
    pb.SPATIAL_MODE_DUAL_SEED: Spatial.DUAL_SEED,
    pb.SPATIAL_MODE_STEREO_HAAS: Spatial.STEREO_HAAS,
}
MODEL_STATES = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
    ModelState.UNLOADING: pb.MODEL_STATE_UNLOADING,
    ModelState.UNLOADED: pb.MODEL_STATE_UNLOADED,
}


def raw_request(spec: pb.GenerationSpec) -> RawRequest:
    """Proto spec -> plain request; unknown enum values are refused here."""
    if spec.mode != pb.CHUNK_MODE_UNSPECIFIED and spec.mode not in MODES:
        raise InvalidRequest("mode", f"unknown chunk mode {spec.mode}")
    if spec.encoding not in ENCODINGS:
        raise InvalidRequest(
            "encoding",
            f"unknown encoding {spec.encoding}; use PCM16, PCM24, FLOAT32, FLAC or OPUS",
        )
    if spec.spatial not in SPATIAL:
        raise InvalidRequest("spatial", f"unknown spatial mode {spec.spatial}")
    which = spec.WhichOneof("slider_input")
    return RawRequest(
        mode=MODES.get(spec.mode),
        duration_s=spec.duration_s,
        seed=spec.seed if spec.HasField("seed") else None,
        sample_rate=spec.sample_rate,
        encoding=ENCODINGS[spec.encoding],
        spatial=SPATIAL[spec.spatial],
        stereo_width=spec.stereo_width if spec.HasField("stereo_width") else None,
        steps_between=spec.steps_between if spec.HasField("steps_between") else None,
        evolution_amount=spec.evolution_amount if spec.HasField("evolution_amount") else None,
        latent=list(spec.latent.values) if which == "latent" else None,
        slider_positions=(
            [(p.index, p.position) for p in spec.sliders.positions] if which == "sliders" else None
        ),
        chunk_duration_s=spec.chunk_duration_s if spec.HasField("chunk_duration_s") else None,
        bitrate_bps=spec.bitrate_bps if spec.HasField("bitrate_bps") else None,
        bits_per_sample=spec.bits_per_sample if spec.HasField("bits_per_sample") else None,
        stereo_depth=spec.stereo_depth if spec.HasField("stereo_depth") else None,
    )


def raw_control(control: pb.LiveControl) -> RawControl:
    """Proto live control -> plain control (checked by the pipeline's ``check_control``)."""
    which = control.WhichOneof("target")
    return RawControl(
        sequence=control.sequence,
        latent=list(control.latent.values) if which == "latent" else None,
        slider_positions=(
            [(p.index, p.position) for p in control.sliders.positions]
            if which == "sliders"
            else None
        ),
        evolution_amount=(
            control.evolution_amount if control.HasField("evolution_amount") else None
        ),
        stereo_width=control.stereo_width if control.HasField("stereo_width") else None,
        transition_s=control.transition_s if control.HasField("transition_s") else None,
        stop=control.stop,
        position=control.position if control.HasField("position") else None,
    )


def mode_label(spec: Any) -> str:
    """A spec's chunk mode as a metrics label ("unknown" for a value the API lacks)."""
    return MODES[spec.mode].value if spec.mode in MODES else "unknown"


def container_of(request: pb.GenerateRequest) -> Container:
    """The unary reply's container, checked against its encoding."""
    if request.container not in CONTAINERS:
        raise InvalidRequest(
            "container", f"unknown value {request.container}; use RAW, WAV, FLAC or OGG"
        )
    encoding = ENCODINGS.get(request.spec.encoding)
    if encoding is None:  # refused with its own message by validation
        return Container.RAW
    try:
        return container_for(encoding, CONTAINERS[request.container])
    except ValueError as exc:
        raise InvalidRequest("container", str(exc)) from None


def audio_format(
    params: GenerationParams, container: Container, tags: dict[str, str]
) -> pb.AudioFormat:
    p = params
    return pb.AudioFormat(
        tags=tags,
        sample_rate=p.sample_rate,
        channels=p.channels,
        encoding=ENCODING_ENUM[p.encoding],
        container=CONTAINER_ENUM[container],
        total_samples=p.total_samples,
        bits_per_sample=p.bits_per_sample,
        bitrate_bps=p.bitrate_bps,
    )


def stream_header(
    params: GenerationParams,
    opus: OpusStreamHeader | None,
    model: str,
    version: str,
    tags: dict[str, str],
) -> pb.StreamHeader:
    """A stream's first message: its raw format and tags, seed, model and (Opus) codec
    header."""
    header = pb.StreamHeader(
        format=audio_format(params, Container.RAW, tags),
        seed=params.seed,
        model=model,
        model_version=version,
    )
    if opus is not None:
        header.opus.CopyFrom(
            pb.OpusHeader(
                id_header=opus.id_header,
                pre_skip=opus.pre_skip,
                channels=opus.channels,
                frame_duration_ms=opus.frame_duration_ms,
            )
        )
    return header


def stats_message(
    stats: PipelineStats, started: float, first_audio: float | None, provider: str, fallbacks: int
) -> pb.GenerationStats:
    """A generation's stats as the reply reports them (times from ``time.perf_counter``)."""
    return pb.GenerationStats(
        time_to_first_audio_s=first_audio or 0.0,
        total_s=time.perf_counter() - started,
        execution_provider=provider,
        decoder_chunks=stats.decoder_chunks,
        vocoder_blocks=stats.vocoder_blocks,
        cpu_fallbacks=fallbacks,
    )


def audio_chunk(
    coded: Coded, sequence: int, offset: int, control: int = 0, position: int = 0
) -> pb.AudioChunk:
    return pb.AudioChunk(
        sequence=sequence,
        sample_offset=offset,
        num_samples=coded.frames,
        data=coded.data,
        packets=coded.packets,
        control_sequence=control,
        position=position,
    )


def sliders(model: ModelSpec) -> list[pb.Slider]:
    if model.sliders is None:
        return []
    s = model.sliders
    half = s.max_position
    ranges = s.ranges or tuple((-half, half, -half, half) for _ in s.labels)
    return [
        pb.Slider(
            index=i,
            label=label,
            min_position=-half,
            max_position=half,
            safe_min_position=safe_lo,
            safe_max_position=safe_hi,
            warning_min_position=warn_lo,
            warning_max_position=warn_hi,
        )
        for i, (label, (safe_lo, safe_hi, warn_lo, warn_hi)) in enumerate(
            zip(s.labels, ranges, strict=True)
        )
    ]


def model_card(manifest: dict[str, Any]) -> pb.ModelCard:
    """What the Distill file said of its model (manifest ``source``), as far as it said it."""
    source = manifest.get("source", {})
    meta = source.get("checkpoint_metadata") or {}

    def number(key: str) -> float:
        value = meta.get(key)
        return float(value) if isinstance(value, int | float) else 0.0

    return pb.ModelCard(
        display_name=str(meta.get("name", "")),
        description=str(meta.get("description", "")),
        training_epochs=int(number("training_epochs")),
        dataset_name=str(meta.get("dataset_name", "")),
        dataset_file_count=int(number("dataset_file_count")),
        dataset_duration_s=number("dataset_total_duration_s"),
        file_format=str(source.get("checkpoint_format", "")),
    )


def model_status(entry: ModelEntry, default_name: str) -> pb.ModelStatus:
    spec = entry.spec
    return pb.ModelStatus(
        name=entry.name,
        version=entry.version,
        state=MODEL_STATES[entry.state],
        reason=client_reason(entry.reason),
        vocoder=entry.vocoder,
        sample_rates=list(spec.sample_rates) if spec else [],
        default_sample_rate=spec.default_sample_rate if spec else 0,
        sliders=sliders(spec) if spec else [],
        in_flight=entry.in_flight,
        is_default=entry.name == default_name,
    )
