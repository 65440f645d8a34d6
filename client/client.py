"""Typed Python clients for distill-serve: :class:`Client` (blocking) and
:class:`AsyncClient` (asyncio). Audio comes back as numpy arrays shaped (channels, samples)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import numpy as np

from distill_serve.audio import Encoding, decode
from distill_serve.codecs import OpusDecoder, read_file
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from distill_serve.client.live import AsyncLiveSession, LiveSession

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


@dataclass(frozen=True)
class AudioBlock:
    """One streamed block ``(channels, n)`` starting at ``sample_offset``.

    ``control_sequence`` (live sessions): the last control whose change this block reflects.
    """

    sequence: int
    sample_offset: int
    audio: np.ndarray
    header: StreamHeader
    control_sequence: int = 0


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


def build_spec(
    mode: str,
    duration_s: float,
    *,
    seed: int | None = None,
    sample_rate: int = 0,
    encoding: str = "pcm16",
    spatial: str = "mono",
    stereo_width: float | None = None,
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


def _generate_request(mode: str, duration_s: float, wav: bool, options: Any) -> pb.GenerateRequest:
    """PCM comes raw or (``wav``) as a WAV file; FLAC and Opus in their own files."""
    spec = build_spec(mode, duration_s, **options)
    if spec.encoding in (pb.AUDIO_ENCODING_FLAC, pb.AUDIO_ENCODING_OPUS):
        container = pb.CONTAINER_UNSPECIFIED
    else:
        container = pb.CONTAINER_WAV if wav else pb.CONTAINER_RAW
    return pb.GenerateRequest(spec=spec, container=container)


def _stream_request(mode: str, duration_s: float, options: Any) -> pb.GenerateStreamRequest:
    return pb.GenerateStreamRequest(spec=build_spec(mode, duration_s, **options))


def _metadata(token: str | None, metadata: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    md = list(metadata)
    if token:
        md.append(("authorization", f"Bearer {token}"))
    return md


def _channel_options() -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]


def _header(h: pb.StreamHeader) -> StreamHeader:
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
    )


def _unary_result(r: pb.GenerateResponse, started: float) -> AudioResult:
    f = r.format
    is_file = f.container in (pb.CONTAINER_WAV, pb.CONTAINER_FLAC, pb.CONTAINER_OGG)
    if is_file:
        audio, _ = read_file(r.audio)
    else:
        audio = decode(r.audio, ENCODING_FROM_PB[f.encoding], f.channels)
    elapsed = time.perf_counter() - started
    stats = GenerationStats.from_pb(r.stats)
    file = r.audio if is_file else b""
    return AudioResult(audio, f.sample_rate, r.seed, stats, elapsed, elapsed, file)


class _Collector:
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
            self.header = _header(msg.header)
            if self.header.encoding is Encoding.OPUS:
                h = self.header
                self._opus = OpusDecoder(h.opus_id_header, h.sample_rate, h.channels)
            return None
        if kind == "end":
            self.stats = GenerationStats.from_pb(msg.end.stats)
            if self._opus is not None:  # the resampler's last samples (below 48 kHz)
                self.blocks.append(self._opus.finish())
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
        return AudioBlock(chunk.sequence, offset, audio, self.header, chunk.control_sequence)

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
        )


class _Base:
    """What both clients share: default deadline and request metadata."""

    _timeout: float | None
    _metadata: list[tuple[str, str]]

    def _kw(self, timeout: float | None, model: str = "") -> dict[str, Any]:
        """Call options. A named model also goes out as ``multiplexed_model_id`` metadata,
        which Ray Serve's proxy routes by (to a replica that has the model loaded); a plain
        server reads the name from the request and ignores it."""
        metadata = self._metadata + ([(MODEL_METADATA, model)] if model else [])
        return {"timeout": timeout or self._timeout, "metadata": metadata}


class Client(_Base):
    """Blocking client.

    Args:
        target: ``host:port`` of a distill-serve server.
        credentials: TLS channel credentials (None: plaintext).
        token: bearer token sent as ``authorization: Bearer <token>``.
        metadata: extra request metadata.
        timeout: default deadline in seconds for each call (None: no deadline).
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> None:
        self._channel = (
            grpc.secure_channel(target, credentials, options=_channel_options())
            if credentials is not None
            else grpc.insecure_channel(target, options=_channel_options())
        )
        self._stub = pb_grpc.DistillServiceStub(self._channel)
        self._metadata = _metadata(token, metadata)
        self._timeout = timeout

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def info(self, timeout: float | None = None, model: str = "") -> ModelInfo:
        """A model's info (sliders, rates, limits, provider); ``model`` "": the default."""
        try:
            request = pb.GetModelInfoRequest(model=model)
            return ModelInfo.from_pb(self._stub.GetModelInfo(request, **self._kw(timeout, model)))
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None

    def list_models(self, timeout: float | None = None) -> list[ModelStatus]:
        """The server's models, their versions and states."""
        try:
            reply = self._stub.ListModels(pb.ListModelsRequest(), **self._kw(timeout))
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        return [ModelStatus.from_pb(m) for m in reply.models]

    def load_model(self, name: str, timeout: float | None = None) -> ModelStatus:
        """Load (or reload) ``name`` from the server's repository; needs an admin token.
        Returns its state: ready, or failed with the reason."""
        try:
            reply = self._stub.LoadModel(pb.LoadModelRequest(name=name), **self._kw(timeout))
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        return ModelStatus.from_pb(reply.model)

    def unload_model(
        self, name: str, grace_s: float | None = None, timeout: float | None = None
    ) -> ModelStatus:
        """Unload ``name``: in-flight generations get ``grace_s`` (default: the server's
        --grace) to finish. Needs an admin token."""
        request = pb.UnloadModelRequest(name=name)
        if grace_s is not None:
            request.grace_s = grace_s
        try:
            reply = self._stub.UnloadModel(request, **self._kw(timeout))
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        return ModelStatus.from_pb(reply.model)

    def generate(
        self,
        mode: str,
        duration_s: float,
        *,
        wav: bool = False,
        timeout: float | None = None,
        **options: Any,
    ) -> AudioResult:
        """Generate a whole clip (unary). ``options`` are :func:`build_spec`'s keywords."""
        request = _generate_request(mode, duration_s, wav, options)
        started = time.perf_counter()
        try:
            reply = self._stub.Generate(request, **self._kw(timeout, request.spec.model))
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        return _unary_result(reply, started)

    def stream(
        self, mode: str, duration_s: float, *, timeout: float | None = None, **options: Any
    ) -> Iterator[AudioBlock]:
        """Yield audio blocks as the server sends them."""
        collector = _Collector(time.perf_counter())
        yield from self._receive(collector, _stream_request(mode, duration_s, options), timeout)

    def generate_streamed(
        self, mode: str, duration_s: float, *, timeout: float | None = None, **options: Any
    ) -> AudioResult:
        """Generate through the streaming RPC and collect the whole clip."""
        collector = _Collector(time.perf_counter())
        for _ in self._receive(collector, _stream_request(mode, duration_s, options), timeout):
            pass
        return collector.result()

    def live(
        self,
        mode: str,
        *,
        seed: int | None = None,
        sliders: Mapping[int, int] | None = None,
        latent: Sequence[float] | np.ndarray | None = None,
        lookahead: float | None = 0.3,
        timeout: float | None = None,
        **spec: Any,
    ) -> LiveSession:
        """Open a live session: iterate it for blocks, steer it with its ``set_*`` methods,
        end it with ``stop()``. ``spec`` takes :func:`build_spec`'s other keywords."""
        from distill_serve.client.live import LiveSession, start_request

        first = start_request(mode, lookahead, seed, sliders, latent, spec)
        return LiveSession(self._stub, first, self._kw(timeout, first.start.spec.model))

    def _receive(
        self, collector: _Collector, request: pb.GenerateStreamRequest, timeout: float | None
    ) -> Iterator[AudioBlock]:
        """Run a GenerateStream call, feeding every message to ``collector``."""
        call = self._stub.GenerateStream(request, **self._kw(timeout, request.spec.model))
        try:
            for msg in call:
                block = collector.feed(msg)
                if block is not None:
                    yield block
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        finally:
            call.cancel()


class AsyncClient(_Base):
    """asyncio client with the same methods as :class:`Client` (``async``)."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float | None = None,
    ) -> None:
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=_channel_options())
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=_channel_options())
        )
        self._stub = pb_grpc.DistillServiceStub(self._channel)
        self._metadata = _metadata(token, metadata)
        self._timeout = timeout

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def info(self, timeout: float | None = None, model: str = "") -> ModelInfo:
        try:
            reply = await self._stub.GetModelInfo(
                pb.GetModelInfoRequest(model=model), **self._kw(timeout, model)
            )
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        return ModelInfo.from_pb(reply)

    async def list_models(self, timeout: float | None = None) -> list[ModelStatus]:
        try:
            reply = await self._stub.ListModels(pb.ListModelsRequest(), **self._kw(timeout))
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        return [ModelStatus.from_pb(m) for m in reply.models]

    async def generate(
        self,
        mode: str,
        duration_s: float,
        *,
        wav: bool = False,
        timeout: float | None = None,
        **options: Any,
    ) -> AudioResult:
        request = _generate_request(mode, duration_s, wav, options)
        started = time.perf_counter()
        try:
            reply = await self._stub.Generate(request, **self._kw(timeout, request.spec.model))
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        return _unary_result(reply, started)

    async def stream(
        self, mode: str, duration_s: float, *, timeout: float | None = None, **options: Any
    ) -> AsyncIterator[AudioBlock]:
        collector = _Collector(time.perf_counter())
        request = _stream_request(mode, duration_s, options)
        async for block in self._receive(collector, request, timeout):
            yield block

    async def generate_streamed(
        self, mode: str, duration_s: float, *, timeout: float | None = None, **options: Any
    ) -> AudioResult:
        collector = _Collector(time.perf_counter())
        request = _stream_request(mode, duration_s, options)
        async for _ in self._receive(collector, request, timeout):
            pass
        return collector.result()

    def live(
        self,
        mode: str,
        *,
        seed: int | None = None,
        sliders: Mapping[int, int] | None = None,
        latent: Sequence[float] | np.ndarray | None = None,
        lookahead: float | None = 0.3,
        timeout: float | None = None,
        **spec: Any,
    ) -> AsyncLiveSession:
        """Open a live session (``async for`` its blocks); see :meth:`Client.live`."""
        from distill_serve.client.live import AsyncLiveSession, start_request

        first = start_request(mode, lookahead, seed, sliders, latent, spec)
        return AsyncLiveSession(self._stub, first, self._kw(timeout, first.start.spec.model))

    async def _receive(
        self, collector: _Collector, request: pb.GenerateStreamRequest, timeout: float | None
    ) -> AsyncIterator[AudioBlock]:
        """Run a GenerateStream call, feeding every message to ``collector``."""
        call = self._stub.GenerateStream(request, **self._kw(timeout, request.spec.model))
        try:
            async for msg in call:
                block = collector.feed(msg)
                if block is not None:
                    yield block
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        finally:
            call.cancel()
