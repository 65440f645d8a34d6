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
from distill_serve.client.v1 import distill_pb2 as pb
from distill_serve.client.v1 import distill_pb2_grpc as pb_grpc

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
}
ENCODING_FROM_PB = {v: Encoding(k) for k, v in ENCODINGS.items()}
SPATIAL = {
    "mono": pb.SPATIAL_MODE_MONO,
    "stereo": pb.SPATIAL_MODE_STEREO_MID_SIDE,
    "dual_seed": pb.SPATIAL_MODE_DUAL_SEED,
}
MAX_RECEIVE_BYTES = 256 << 20


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

    ``client_first_audio_s`` and ``client_total_s`` are measured by the client.
    """

    audio: np.ndarray
    sample_rate: int
    seed: int
    stats: GenerationStats | None
    client_first_audio_s: float = 0.0
    client_total_s: float = 0.0

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
) -> pb.GenerationSpec:
    """A :class:`GenerationSpec` from Python values (names as in the CLI)."""
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
    )
    optional: dict[str, Any] = {
        "seed": seed,
        "stereo_width": stereo_width,
        "steps_between": steps_between,
        "evolution_amount": evolution_amount,
        "chunk_duration_s": chunk_duration_s,
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
    return pb.GenerateRequest(
        spec=build_spec(mode, duration_s, **options),
        container=pb.CONTAINER_WAV if wav else pb.CONTAINER_RAW,
    )


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
        f.sample_rate, f.channels, ENCODING_FROM_PB[f.encoding], h.seed, f.total_samples
    )


def _unary_result(r: pb.GenerateResponse, started: float) -> AudioResult:
    f = r.format
    if f.container == pb.CONTAINER_WAV:
        import io

        import soundfile as sf

        data, _ = sf.read(io.BytesIO(r.audio), dtype="float32", always_2d=True)
        audio = data.T
    else:
        audio = decode(r.audio, ENCODING_FROM_PB[f.encoding], f.channels)
    elapsed = time.perf_counter() - started
    return AudioResult(
        audio, f.sample_rate, r.seed, GenerationStats.from_pb(r.stats), elapsed, elapsed
    )


class _Collector:
    """Collects streamed messages into an :class:`AudioResult`."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.header: StreamHeader | None = None
        self.blocks: list[np.ndarray] = []
        self.stats: GenerationStats | None = None
        self.first: float | None = None

    def feed(self, msg: pb.GenerateStreamResponse | pb.GenerateLiveResponse) -> AudioBlock | None:
        kind = msg.WhichOneof("event")
        if kind == "header":
            self.header = _header(msg.header)
            return None
        if kind == "end":
            self.stats = GenerationStats.from_pb(msg.end.stats)
            return None
        if self.header is None:
            raise DistillError(grpc.StatusCode.INTERNAL, "stream sent audio before its header")
        if self.first is None:
            self.first = time.perf_counter() - self.started
        chunk = msg.audio
        audio = decode(chunk.data, self.header.encoding, self.header.channels)
        self.blocks.append(audio)
        return AudioBlock(
            chunk.sequence, chunk.sample_offset, audio, self.header, chunk.control_sequence
        )

    def result(self) -> AudioResult:
        if self.header is None:
            raise DistillError(grpc.StatusCode.INTERNAL, "stream ended without a header")
        audio = (
            np.concatenate(self.blocks, axis=1)
            if self.blocks
            else np.zeros((self.header.channels, 0), np.float32)
        )
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

    def _kw(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": timeout or self._timeout, "metadata": self._metadata}


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

    def info(self, timeout: float | None = None) -> ModelInfo:
        """The server's model info (sliders, rates, limits, provider)."""
        try:
            return ModelInfo.from_pb(
                self._stub.GetModelInfo(
                    pb.GetModelInfoRequest(),
                    **self._kw(timeout),
                )
            )
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None

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
            reply = self._stub.Generate(request, **self._kw(timeout))
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
        return LiveSession(self._stub, first, self._kw(timeout))

    def _receive(
        self, collector: _Collector, request: pb.GenerateStreamRequest, timeout: float | None
    ) -> Iterator[AudioBlock]:
        """Run a GenerateStream call, feeding every message to ``collector``."""
        call = self._stub.GenerateStream(request, **self._kw(timeout))
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

    async def info(self, timeout: float | None = None) -> ModelInfo:
        try:
            reply = await self._stub.GetModelInfo(pb.GetModelInfoRequest(), **self._kw(timeout))
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        return ModelInfo.from_pb(reply)

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
            reply = await self._stub.Generate(request, **self._kw(timeout))
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
        return AsyncLiveSession(self._stub, first, self._kw(timeout))

    async def _receive(
        self, collector: _Collector, request: pb.GenerateStreamRequest, timeout: float | None
    ) -> AsyncIterator[AudioBlock]:
        """Run a GenerateStream call, feeding every message to ``collector``."""
        call = self._stub.GenerateStream(request, **self._kw(timeout))
        try:
            async for msg in call:
                block = collector.feed(msg)
                if block is not None:
                    yield block
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        finally:
            call.cancel()
