"""Requests from Python values, and replies back to the client's records: the spec builder,
call options, and the collector that turns a stream's messages into audio blocks."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from distill_serve.audio import Encoding, decode
from distill_serve.client.records import (
    ENCODING_FROM_PB,
    ENCODINGS,
    MAX_RECEIVE_BYTES,
    MODES,
    SPATIAL,
    AudioBlock,
    AudioResult,
    DistillError,
    GenerationStats,
    StreamHeader,
)
from distill_serve.codecs import OpusDecoder, read_file
from distill_serve.v1 import distill_pb2 as pb


def build_spec(
    mode: str,
    duration_s: float,
    *,
    seed: int | None = None,
    sample_rate: int = 0,
    encoding: str = "pcm16",
    spatial: str = "mono",
    stereo_width: float | None = None,
    stereo_depth: float | None = None,
    steps_between: int | None = None,
    evolution_amount: float | None = None,
    latent: Sequence[float] | np.ndarray | None = None,
    sliders: Mapping[int, int] | None = None,
    chunk_duration_s: float | None = None,
    model: str = "",
    bitrate_bps: int | None = None,
    bits_per_sample: int | None = None,
) -> pb.GenerationSpec:
    """A :class:`GenerationSpec` from Python values (names as in the CLI); ``model`` names
    the server's model ("": its default); ``bitrate_bps`` for ``opus``, ``bits_per_sample``
    (16, 24) for ``flac``."""
    for name, value, allowed in (
        ("mode", mode, MODES),
        ("encoding", encoding, ENCODINGS),
        ("spatial", spatial, SPATIAL),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")
    spec = pb.GenerationSpec(
        mode=MODES[mode],
        duration_s=duration_s,
        sample_rate=sample_rate,
        encoding=ENCODINGS[encoding],
        spatial=SPATIAL[spatial],
        model=model,
    )
    optional: dict[str, Any] = {
        "seed": seed,
        "stereo_width": stereo_width,
        "stereo_depth": stereo_depth,
        "steps_between": steps_between,
        "evolution_amount": evolution_amount,
        "chunk_duration_s": chunk_duration_s,
        "bitrate_bps": bitrate_bps,
        "bits_per_sample": bits_per_sample,
    }
    for key, value in optional.items():
        if value is not None:
            setattr(spec, key, value)
    if latent is not None:
        spec.latent.values.extend(float(v) for v in np.asarray(latent).ravel())
    if sliders is not None:
        spec.sliders.positions.extend(
            pb.SliderPosition(index=i, position=p) for i, p in sliders.items()
        )
    return spec


def generate_request(mode: str, duration_s: float, wav: bool, options: Any) -> pb.GenerateRequest:
    """PCM comes raw or (``wav``) as a WAV file; FLAC and Opus in their own files."""
    spec = build_spec(mode, duration_s, **options)
    if spec.encoding in (pb.AUDIO_ENCODING_FLAC, pb.AUDIO_ENCODING_OPUS):
        container = pb.CONTAINER_UNSPECIFIED
    else:
        container = pb.CONTAINER_WAV if wav else pb.CONTAINER_RAW
    return pb.GenerateRequest(spec=spec, container=container)


def stream_request(mode: str, duration_s: float, options: Any) -> pb.GenerateStreamRequest:
    return pb.GenerateStreamRequest(spec=build_spec(mode, duration_s, **options))


def call_metadata(token: str | None, metadata: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    md = list(metadata)
    if token:
        md.append(("authorization", f"Bearer {token}"))
    return md


def channel_options() -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]


def stream_header(h: pb.StreamHeader) -> StreamHeader:
    f = h.format
    return StreamHeader(
        f.sample_rate,
        f.channels,
        ENCODING_FROM_PB[f.encoding],
        h.seed,
        f.total_samples,
        h.opus.id_header if h.HasField("opus") else b"",
        h.model,
        h.model_version,
        dict(f.tags),
    )


def unary_result(r: pb.GenerateResponse, started: float) -> AudioResult:
    f = r.format
    is_file = f.container in (pb.CONTAINER_WAV, pb.CONTAINER_FLAC, pb.CONTAINER_OGG)
    if is_file:
        audio, _ = read_file(r.audio)
    else:
        audio = decode(r.audio, ENCODING_FROM_PB[f.encoding], f.channels)
    elapsed = time.perf_counter() - started
    stats = GenerationStats.from_pb(r.stats)
    file = r.audio if is_file else b""
    return AudioResult(audio, f.sample_rate, r.seed, stats, elapsed, elapsed, file, dict(f.tags))


class Collector:
    """Collects streamed messages into an :class:`AudioResult`; decodes Opus packets.

    An Opus stream's blocks are the packets' decoded audio (pre-skip dropped), so their
    ``sample_offset`` counts decoded frames; the result is cut to the header's length."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.header: StreamHeader | None = None
        self.blocks: list[np.ndarray] = []
        self.stats: GenerationStats | None = None
        self.first: float | None = None
        self._opus: OpusDecoder | None = None
        self._decoded = 0

    def feed(self, msg: pb.GenerateStreamResponse | pb.GenerateLiveResponse) -> AudioBlock | None:
        kind = msg.WhichOneof("event")
        if kind == "header":
            self.header = stream_header(msg.header)
            if self.header.encoding is Encoding.OPUS:
                h = self.header
                self._opus = OpusDecoder(h.opus_id_header, h.sample_rate, h.channels)
            return None
        if kind == "end":
            self.stats = GenerationStats.from_pb(msg.end.stats)
            if self._opus is not None:  # the resampler's last samples (below 48 kHz)
                self.blocks.append(self._opus.finish())
            return None
        if kind != "audio":  # a live session's ControlRefused: the session handles it
            return None
        if self.header is None:
            raise DistillError(grpc.StatusCode.INTERNAL, "stream sent audio before its header")
        if self.first is None:
            self.first = time.perf_counter() - self.started
        chunk = msg.audio
        if self._opus is not None:
            audio = self._opus.decode(list(chunk.packets))
            offset = self._decoded
        else:
            audio = decode(chunk.data, self.header.encoding, self.header.channels)
            offset = chunk.sample_offset
        self._decoded += audio.shape[1]
        self.blocks.append(audio)
        return AudioBlock(
            chunk.sequence, offset, audio, self.header, chunk.control_sequence, chunk.position
        )

    def result(self) -> AudioResult:
        if self.header is None:
            raise DistillError(grpc.StatusCode.INTERNAL, "stream ended without a header")
        audio = (
            np.concatenate(self.blocks, axis=1)
            if self.blocks
            else np.zeros((self.header.channels, 0), np.float32)
        )
        if self.header.total_samples:  # Opus: the last packet's padding
            audio = audio[:, : self.header.total_samples]
        return AudioResult(
            audio,
            self.header.sample_rate,
            self.header.seed,
            self.stats,
            self.first or 0.0,
            time.perf_counter() - self.started,
            tags=self.header.tags,
        )
