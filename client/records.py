"""What the clients hand back and take: audio results, stream headers and blocks, stats,
model info and status, errors; and the API's names for modes, encodings and spatial modes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from distill_serve.audio import Encoding
from distill_serve.v1 import distill_pb2 as pb

MODES = {
    "crossfade": pb.CHUNK_MODE_CROSSFADE,
    "latent_interp": pb.CHUNK_MODE_LATENT_INTERP,
    "slider": pb.CHUNK_MODE_SLIDER,
}
ENCODINGS = {
    "pcm16": pb.AUDIO_ENCODING_PCM16,
    "pcm24": pb.AUDIO_ENCODING_PCM24,
    "float32": pb.AUDIO_ENCODING_FLOAT32,
    "flac": pb.AUDIO_ENCODING_FLAC,
    "opus": pb.AUDIO_ENCODING_OPUS,
}
ENCODING_FROM_PB = {v: Encoding(k) for k, v in ENCODINGS.items()}
SPATIAL = {
    "mono": pb.SPATIAL_MODE_MONO,
    "stereo": pb.SPATIAL_MODE_STEREO_MID_SIDE,
    "dual_seed": pb.SPATIAL_MODE_DUAL_SEED,
    "haas": pb.SPATIAL_MODE_STEREO_HAAS,
}
MAX_RECEIVE_BYTES = 256 << 20
#: Ray Serve's model multiplexing header
MODEL_METADATA = "multiplexed_model_id"


class DistillError(Exception):
    """A gRPC error from the server, with its status code and message."""

    def __init__(
        self, code: grpc.StatusCode, details: str, retry_after_ms: int | None = None
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        #: the server's ``retry-after-ms`` hint (sent with RESOURCE_EXHAUSTED)
        self.retry_after_ms = retry_after_ms

    @classmethod
    def wrap(cls, exc: grpc.RpcError) -> DistillError:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        retry = None
        # Runtime metadata is a sequence of (key, value) pairs (grpc-stubs types it otherwise).
        trailing: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
        for key, value in trailing or ():
            if key == "retry-after-ms":
                retry = int(value)
        return cls(code, details or "", retry)


@dataclass(frozen=True)
class GenerationStats:
    time_to_first_audio_s: float
    total_s: float
    execution_provider: str
    decoder_chunks: int
    vocoder_blocks: int
    cpu_fallbacks: int

    @classmethod
    def from_pb(cls, s: pb.GenerationStats) -> GenerationStats:
        return cls(
            s.time_to_first_audio_s,
            s.total_s,
            s.execution_provider,
            s.decoder_chunks,
            s.vocoder_blocks,
            s.cpu_fallbacks,
        )


@dataclass(frozen=True)
class AudioResult:
    """Audio ``(channels, samples)`` float32 in [-1, 1] with its rate, seed and stats.

    ``client_first_audio_s`` and ``client_total_s`` are measured by the client. ``file``:
    the reply's file as the server sent it (a unary WAV, FLAC or Ogg Opus reply), which
    ``audio`` is decoded from; empty for raw samples and streams.
    """

    audio: np.ndarray
    sample_rate: int
    seed: int
    stats: GenerationStats | None
    client_first_audio_s: float = 0.0
    client_total_s: float = 0.0
    file: bytes = b""
    #: how the audio was made (``distill_seed``, ``distill_model``, ``distill_bundle``,
    #: ``distill_settings``; :mod:`distill_serve.tags`), as files written from it carry
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return int(self.audio.shape[0])

    @property
    def duration_s(self) -> float:
        return self.audio.shape[1] / self.sample_rate


@dataclass(frozen=True)
class StreamHeader:
    sample_rate: int
    channels: int
    encoding: Encoding
    seed: int
    total_samples: int
    #: Opus streams: the identification header (OpusHead) the packets decode with
    opus_id_header: bytes = b""
    model: str = ""
    model_version: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AudioBlock:
    """One streamed block ``(channels, n)`` starting at ``sample_offset``.

    ``control_sequence`` (live sessions): the last control whose change this block reflects.
    ``position`` (timeline sessions): the timeline position of the block's first frame.
    """

    sequence: int
    sample_offset: int
    audio: np.ndarray
    header: StreamHeader
    control_sequence: int = 0
    position: int = 0


@dataclass(frozen=True)
class ControlRefusal:
    """A live control the server did not take (the session played on): its sequence, a gRPC
    status name (``OUT_OF_RANGE``, ``INVALID_ARGUMENT``, ``RESOURCE_EXHAUSTED``) and why."""

    sequence: int
    code: str
    message: str


@dataclass(frozen=True)
class SliderInfo:
    index: int
    label: str
    min_position: int
    max_position: int


@dataclass(frozen=True)
class ModelInfo:
    latent_dim: int
    sliders: list[SliderInfo]
    sample_rates: list[int]
    default_sample_rate: int
    encodings: list[str]
    max_duration_s: float
    max_concurrent_generations: int
    execution_provider: str
    files: list[tuple[str, str, str]] = field(default_factory=list)
    vocoder_precision: str = "fp32"
    #: why CUDA is not serving although it was wanted ("" when it is, or was not wanted)
    provider_note: str = ""
    vocoder_path: str = ""
    live_capacity: int = 0
    #: the model described (its name on the server) and its version (bundle_id)
    model: str = ""
    model_version: str = ""
    #: what the Distill file said of its model: name, description, training epochs, dataset
    #: name, file count and duration, and the file's format (".distillgan", ...)
    card: dict[str, Any] = field(default_factory=dict)
    #: the vocoder the bundle runs and why the export chose it
    vocoder: str = ""
    vocoder_choice: str = ""

    @classmethod
    def from_pb(cls, r: pb.GetModelInfoResponse) -> ModelInfo:
        names = {v: k for k, v in ENCODINGS.items()}
        return cls(
            latent_dim=r.latent_dim,
            sliders=[
                SliderInfo(s.index, s.label, s.min_position, s.max_position) for s in r.sliders
            ],
            sample_rates=list(r.sample_rates),
            default_sample_rate=r.default_sample_rate,
            encodings=[names.get(e, str(e)) for e in r.encodings],
            max_duration_s=r.limits.max_duration_s,
            max_concurrent_generations=r.limits.max_concurrent_generations,
            execution_provider=r.execution_provider,
            files=[(f.path, f.role, f.sha256) for f in r.files],
            vocoder_precision=r.vocoder_precision or "fp32",
            provider_note=r.provider_note,
            vocoder_path=r.vocoder_path,
            live_capacity=r.live_capacity,
            model=r.model,
            model_version=r.model_version,
            card={
                "name": r.card.display_name,
                "description": r.card.description,
                "training_epochs": r.card.training_epochs,
                "dataset_name": r.card.dataset_name,
                "dataset_file_count": r.card.dataset_file_count,
                "dataset_duration_s": r.card.dataset_duration_s,
                "file_format": r.card.file_format,
            },
            vocoder=r.vocoder,
            vocoder_choice=r.vocoder_choice,
        )


MODEL_STATES = {
    pb.MODEL_STATE_LOADING: "loading",
    pb.MODEL_STATE_READY: "ready",
    pb.MODEL_STATE_FAILED: "failed",
    pb.MODEL_STATE_UNLOADING: "unloading",
    pb.MODEL_STATE_UNLOADED: "unloaded",
}


@dataclass(frozen=True)
class ModelStatus:
    """One model of a server's repository (``ListModels``, ``LoadModel``, ``UnloadModel``)."""

    name: str
    version: str
    state: str
    reason: str
    vocoder: str
    sample_rates: list[int]
    default_sample_rate: int
    sliders: list[SliderInfo]
    in_flight: int
    is_default: bool

    @classmethod
    def from_pb(cls, m: pb.ModelStatus) -> ModelStatus:
        return cls(
            name=m.name,
            version=m.version,
            state=MODEL_STATES.get(m.state, "unspecified"),
            reason=m.reason,
            vocoder=m.vocoder,
            sample_rates=list(m.sample_rates),
            default_sample_rate=m.default_sample_rate,
            sliders=[
                SliderInfo(s.index, s.label, s.min_position, s.max_position) for s in m.sliders
            ],
            in_flight=m.in_flight,
            is_default=m.is_default,
        )
