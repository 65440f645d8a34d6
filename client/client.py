"""Typed Python clients for distill-serve: :class:`Client` (blocking) and
:class:`AsyncClient` (asyncio). Audio comes back as numpy arrays shaped (channels, samples);
the records they return are in ``records.py``, live sessions in ``live.py``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
import numpy as np

from distill_serve.client.live import AsyncLiveSession, LiveSession, start_request
from distill_serve.client.records import (
    MODEL_METADATA,
    AudioBlock,
    AudioResult,
    DistillError,
    GenerationStats,
    ModelInfo,
    ModelStatus,
    StreamHeader,
)
from distill_serve.client.requests import (
    Collector,
    build_spec,
    call_metadata,
    channel_options,
    generate_request,
    stream_request,
    unary_result,
)
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc

__all__ = [
    "AsyncClient",
    "AudioBlock",
    "AudioResult",
    "Client",
    "DistillError",
    "GenerationStats",
    "ModelInfo",
    "ModelStatus",
    "StreamHeader",
    "build_spec",
]


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
            grpc.secure_channel(target, credentials, options=channel_options())
            if credentials is not None
            else grpc.insecure_channel(target, options=channel_options())
        )
        self._stub = pb_grpc.DistillServiceStub(self._channel)
        self._metadata = call_metadata(token, metadata)
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
        request = generate_request(mode, duration_s, wav, options)
        started = time.perf_counter()
        try:
            reply = self._stub.Generate(request, **self._kw(timeout, request.spec.model))
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        return unary_result(reply, started)

    def stream(
        self, mode: str, duration_s: float, *, timeout: float | None = None, **options: Any
    ) -> Iterator[AudioBlock]:
        """Yield audio blocks as the server sends them."""
        collector = Collector(time.perf_counter())
        yield from self._receive(collector, stream_request(mode, duration_s, options), timeout)

    def generate_streamed(
        self, mode: str, duration_s: float, *, timeout: float | None = None, **options: Any
    ) -> AudioResult:
        """Generate through the streaming RPC and collect the whole clip."""
        collector = Collector(time.perf_counter())
        for _ in self._receive(collector, stream_request(mode, duration_s, options), timeout):
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
        start_position: int | None = None,
        unpaced: bool = False,
        **spec: Any,
    ) -> LiveSession:
        """Open a live session: iterate it for blocks, steer it with its ``set_*`` methods,
        end it with ``stop()``. ``spec`` takes :func:`build_spec`'s other keywords.

        ``start_position`` (output frames) opens a timeline session: its audio is a function
        of the timeline position, and its controls take a ``position`` (docs/api.md).
        ``unpaced`` renders as fast as the server can (an offline bounce)."""
        first = start_request(mode, lookahead, seed, sliders, latent, spec, start_position, unpaced)
        return LiveSession(self._stub, first, self._kw(timeout, first.start.spec.model))

    def _receive(
        self, collector: Collector, request: pb.GenerateStreamRequest, timeout: float | None
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
            grpc.aio.secure_channel(target, credentials, options=channel_options())
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=channel_options())
        )
        self._stub = pb_grpc.DistillServiceStub(self._channel)
        self._metadata = call_metadata(token, metadata)
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
        request = generate_request(mode, duration_s, wav, options)
        started = time.perf_counter()
        try:
            reply = await self._stub.Generate(request, **self._kw(timeout, request.spec.model))
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        return unary_result(reply, started)

    async def stream(
        self, mode: str, duration_s: float, *, timeout: float | None = None, **options: Any
    ) -> AsyncIterator[AudioBlock]:
        collector = Collector(time.perf_counter())
        request = stream_request(mode, duration_s, options)
        async for block in self._receive(collector, request, timeout):
            yield block

    async def generate_streamed(
        self, mode: str, duration_s: float, *, timeout: float | None = None, **options: Any
    ) -> AudioResult:
        collector = Collector(time.perf_counter())
        request = stream_request(mode, duration_s, options)
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
        start_position: int | None = None,
        unpaced: bool = False,
        **spec: Any,
    ) -> AsyncLiveSession:
        """Open a live session (``async for`` its blocks); see :meth:`Client.live`."""
        first = start_request(mode, lookahead, seed, sliders, latent, spec, start_position, unpaced)
        return AsyncLiveSession(self._stub, first, self._kw(timeout, first.start.spec.model))

    async def _receive(
        self, collector: Collector, request: pb.GenerateStreamRequest, timeout: float | None
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
