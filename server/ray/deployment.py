"""One Ray Serve replica: the plain server's servicer behind Serve's gRPC proxy.

:class:`DistillDeployment` only adapts Serve's calling convention to the servicer (the
request context must be a parameter named ``grpc_context``, and Serve's context has no
``abort``: :class:`ServeContext` turns an abort into a status set on the context, after
which the method returns). Its repository is built as the plain server builds its own
(``server/models/build.py``); with many models, Serve's multiplexer calls
:meth:`DistillDeployment.load_model`. The bearer token is checked here (Serve's proxy has no
interceptors), and health is answered here.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from distill_serve.server.api.admission import RETRY_AFTER_MS
from distill_serve.server.api.interceptors import token_valid
from distill_serve.server.api.servicer import DistillServicer
from distill_serve.server.engine.engine import EngineConfig
from distill_serve.server.models.build import ModelSource, build_repository
from distill_serve.server.models.metrics import Metrics
from distill_serve.server.models.repository import ModelRepository, ModelState
from distill_serve.server.pipeline.request import Limits
from distill_serve.server.ray.context import Aborted, ServeContext
from distill_serve.server.ray.metrics_bridge import RayMetricsBridge
from distill_serve.v1 import distill_pb2 as pb

log = logging.getLogger(__name__)

#: Serve's proxy adds these to its gRPC server (in its own process).
SERVICER_FUNCTIONS = [
    "distill_serve.server.ray.deployment.add_distill_service_to_proxy",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
UNAUTHENTICATED = "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'"
#: How long a model Serve evicts from a replica lets its calls in flight run on.
EVICTION_GRACE_S = 120.0


def add_distill_service_to_proxy(servicer: Any, server: Any) -> None:
    """Serve's proxy calls this (a ``grpc_servicer_functions`` entry) in its own process: the
    generated add-function, plus :func:`_retryable_replica_failures` there."""
    from distill_serve.v1.distill_pb2_grpc import add_DistillServiceServicer_to_server

    add_DistillServiceServicer_to_server(servicer, server)
    _retryable_replica_failures()


def _retryable_replica_failures() -> None:
    """Make a request whose replica died end UNAVAILABLE with a ``retry-after-ms`` trailer
    (and keep that trailer on a refused stream).

    Ray Serve 2.60's proxy answers INTERNAL when the replica serving a request dies (a
    ``RayActorError``; ``ray/serve/_private/grpc_util.py: get_grpc_response_status``), though
    the request can simply be retried on another replica. This wraps the two helpers the
    proxy module calls. The ``ray`` extra pins Ray, and ``tests/server/ray/test_ray.py`` kills a
    replica under load, so an upgrade that moves them fails a test instead of going unnoticed.
    """
    from ray.exceptions import RayActorError
    from ray.serve._private import proxy
    from ray.serve._private.proxy_request_response import ResponseStatus

    if getattr(proxy.get_grpc_response_status, "_distill_retryable", False):
        return
    status_of, set_status = proxy.get_grpc_response_status, proxy.set_grpc_code_and_details

    def response_status(
        exc: BaseException, request_timeout_s: float | None, request_id: str
    ) -> ResponseStatus:
        if isinstance(exc, RayActorError):
            return ResponseStatus(
                code=grpc.StatusCode.UNAVAILABLE,
                is_error=True,
                message=f"the replica serving this request stopped ({type(exc).__name__}); "
                f"retry after {RETRY_AFTER_MS} ms",
            )
        return status_of(exc, request_timeout_s, request_id)

    def set_code_and_details(context: Any, status: Any) -> None:
        set_status(context, status)
        # A stream that raises loses the trailers its replica set, so the servicer's
        # RESOURCE_EXHAUSTED hint is added here too, unless the replica's arrived.
        if status.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
            trailers = tuple(getattr(context, "trailing_metadata", lambda: ())() or ())
            if not any(key == "retry-after-ms" for key, _ in trailers):
                context.set_trailing_metadata((*trailers, ("retry-after-ms", str(RETRY_AFTER_MS))))

    response_status._distill_retryable = True  # type: ignore[attr-defined]
    proxy.get_grpc_response_status = response_status
    proxy.set_grpc_code_and_details = set_code_and_details


class _ServedModel:
    """A model Serve's multiplexer holds on one replica. Serve evicts the least recently used
    one by calling ``__del__`` (in a worker thread): the replica's repository then unloads
    it, letting its calls in flight run for up to :data:`EVICTION_GRACE_S`."""

    def __init__(self, models: ModelRepository, name: str, loop: asyncio.AbstractEventLoop):
        self._models, self.name, self._loop = models, name, loop
        self._gone = False

    def __del__(self) -> None:
        if self._gone or self._loop.is_closed():
            return
        self._gone = True
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        unloading = self._models.unload(self.name)
        if on_loop:  # collected on the replica's loop: nothing may block it
            self._loop.create_task(unloading)
        else:
            asyncio.run_coroutine_threadsafe(unloading, self._loop).result()


class DistillDeployment:
    """One Serve replica: the plain server's servicer over one bundle, or over a repository
    whose models Serve multiplexes (:meth:`load_model` is wrapped by ``serve.multiplexed``
    in :func:`build_app`)."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        source: str,
        engine: EngineConfig,
        limits: Limits,
        tokens: Sequence[str],
        repository: bool = False,
        default_model: str | None = None,
    ) -> None:
        self.metrics = metrics = Metrics()
        root = Path(source)
        models = (
            ModelSource(models_dir=root, default_model=default_model, grace_s=EVICTION_GRACE_S)
            if repository
            else ModelSource(bundle=root, name=root.name)
        )
        self._models = build_repository(models, engine, metrics)
        # The default model (or the one bundle) is loaded before the replica counts as
        # running: a new replica (a scale-up, a replacement) then answers at once instead of
        # loading on its first calls (under a full CPU load that outlasted a 60 s deadline).
        # Through the repository's own load, as on a plain server: a failure leaves the model
        # FAILED with its reason (its calls answer with it) and counts in the load metrics.
        default = await self._models.load(self._models.default_name)
        if default.state is ModelState.FAILED:
            if not repository:  # nothing to serve: Serve reports the replica's failure
                raise RuntimeError(f"bundle {source} did not load: {default.reason}")
            log.warning("default model %s did not load at start: %s", default.name, default.reason)
        self._servicer = DistillServicer(self._models, limits, metrics)
        self._tokens = [t.encode() for t in tokens]
        self._bridge = RayMetricsBridge(metrics.registry, _replica_name())
        self._bridge.start()

    async def load_model(self, model_id: str) -> _ServedModel:
        """Serve's multiplexed loader: the model ready on this replica (loaded if need be)."""
        entry = self._models.entry(model_id)
        if entry.engine is None or entry.state is not ModelState.READY:
            await self._models.load(model_id)
        return _ServedModel(self._models, model_id, asyncio.get_running_loop())

    async def get_model(self, model_id: str) -> _ServedModel:
        """:meth:`load_model` through Serve's multiplexer (replaced in :func:`build_app`)."""
        return await self.load_model(model_id)

    async def _route(self, named: str, grpc_context: Any) -> str | None:
        """The model a call is for: the request's, else the ``multiplexed_model_id``
        metadata's, else the default; registered with Serve's multiplexer so that the proxy
        routes further calls for it here. None (status set) if the two names disagree."""
        from ray import serve

        header = serve.get_multiplexed_model_id()
        if named and header and named != header:
            grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            grpc_context.set_details(
                f"model: the request names {named!r} but its multiplexed_model_id metadata "
                f"{header!r}; send one name (the Python client sends both the same)"
            )
            return None
        name = named or header or self._models.default_name
        if name in self._models.names():
            try:
                await self.get_model(name)
            except Exception as exc:  # the servicer answers with the model's state
                log.warning("model %s could not be loaded on this replica: %s", name, exc)
        return name

    def _denied(self, grpc_context: Any) -> bool:
        if not self._tokens:
            return False
        metadata = dict(grpc_context.invocation_metadata() or ())
        if token_valid(str(metadata.get("authorization", "")), self._tokens):
            return False
        grpc_context.set_code(grpc.StatusCode.UNAUTHENTICATED)
        grpc_context.set_details(UNAUTHENTICATED)
        return True

    async def Generate(self, request: pb.GenerateRequest, grpc_context: Any) -> pb.GenerateResponse:
        if self._denied(grpc_context):
            return pb.GenerateResponse()
        name = await self._route(request.spec.model, grpc_context)
        if name is None:
            return pb.GenerateResponse()
        request.spec.model = name
        try:
            return await self._servicer.Generate(request, ServeContext(grpc_context))
        except Aborted:
            return pb.GenerateResponse()

    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, grpc_context: Any
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        if self._denied(grpc_context):
            raise Aborted(UNAUTHENTICATED)  # a stream's status reaches the client only so
        name = await self._route(request.spec.model, grpc_context)
        if name is None:
            raise Aborted("model names disagree")
        request.spec.model = name
        context = ServeContext(grpc_context)
        async for msg in context.stream(self._servicer.GenerateStream(request, context)):
            yield msg

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, grpc_context: Any
    ) -> pb.GetModelInfoResponse:
        if self._denied(grpc_context):
            return pb.GetModelInfoResponse()
        name = await self._route(request.model, grpc_context)
        if name is None:
            return pb.GetModelInfoResponse()
        request.model = name
        try:
            return await self._servicer.GetModelInfo(request, ServeContext(grpc_context))
        except Aborted:
            return pb.GetModelInfoResponse()

    async def ListModels(
        self, request: pb.ListModelsRequest, grpc_context: Any
    ) -> pb.ListModelsResponse:
        """The repository as the replica that answers sees it (states are per replica)."""
        if self._denied(grpc_context):
            return pb.ListModelsResponse()
        return await self._servicer.ListModels(request, ServeContext(grpc_context))

    async def LoadModel(self, request: pb.LoadModelRequest, grpc_context: Any) -> Any:
        return self._no_model_control(grpc_context, pb.LoadModelResponse())

    async def UnloadModel(self, request: pb.UnloadModelRequest, grpc_context: Any) -> Any:
        return self._no_model_control(grpc_context, pb.UnloadModelResponse())

    @staticmethod
    def _no_model_control(grpc_context: Any, empty: Any) -> Any:
        grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        grpc_context.set_details(
            "on Ray Serve each replica loads models on demand (multiplexing) and a call "
            "reaches one replica: change the repository directory and redeploy instead"
        )
        return empty

    async def Check(self, request: Any, grpc_context: Any) -> Any:
        """grpc.health.v1 (open, like the plain server's)."""
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _replica_name() -> str:
    """The replica's Serve tag, for the ``replica`` label of its metrics."""
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_tag)
    except Exception:  # outside a replica (tests): the process
        return f"pid-{os.getpid()}"
