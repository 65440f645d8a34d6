"""The same gRPC service on Ray Serve: replicas, autoscaling and GPU sharing behind Serve's
gRPC proxy, from the same bundle (``distill-serve serve --ray``).

One servicer implementation serves both modes: each replica holds a
:class:`~distill_serve.server.api.servicer.DistillServicer` and :class:`DistillDeployment` only
adapts Serve's calling convention to it (the request context must be a parameter named
``grpc_context``, and Serve's context has no ``abort``: :class:`_ServeContext` turns an abort
into a status set on the context, after which the method returns).

Many models (``serve --ray --models DIR``) go through Serve's model multiplexing: every
replica has the whole repository and loads a model when a call for it comes
(``@serve.multiplexed`` around :meth:`DistillDeployment.load_model`, at most
``max_models_per_replica`` at once, the least recently used unloaded first, its calls in
flight let finish). The model a call names (``GenerationSpec.model``) and the
``multiplexed_model_id`` metadata the Python client sends with it must agree; the proxy
routes by the metadata to a replica that has the model loaded. Each replica copies its
Prometheus metrics into Ray's metrics export (``server/ray/metrics_bridge.py``).

What Serve's proxy does not offer: client-streaming and bidirectional RPCs (so no
``GenerateLive``; ray-project/ray#42488), server reflection, and interceptors (the bearer
token is checked here instead). Health (``grpc.health.v1.Health/Check``) is answered by the
deployment. ``LoadModel``/``UnloadModel`` are refused (``UNIMPLEMENTED``): replicas load
models on demand, and one call would reach one replica only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from distill_serve.server.api.interceptors import token_valid
from distill_serve.server.api.server import repository_hooks
from distill_serve.server.api.servicer import RETRY_AFTER_MS, DistillServicer
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.models.metrics import Metrics
from distill_serve.server.models.repository import ModelRepository, ModelState
from distill_serve.server.pipeline.request import Limits
from distill_serve.server.ray.metrics_bridge import RayMetricsBridge
from distill_serve.v1 import distill_pb2 as pb

log = logging.getLogger(__name__)

#: How long Serve's proxy may take to start. Serve itself gives up after a fixed 60 s
#: (``HTTP_PROXY_TIMEOUT``, not configurable), which a node with every core busy misses.
PROXY_START_S = 600.0

APP_NAME = "distill"
SERVICER_FUNCTIONS = [
    "distill_serve.server.ray.serve.add_distill_service_to_proxy",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
UNAUTHENTICATED = "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'"
#: How long a model Serve evicts from a replica lets its calls in flight run on.
EVICTION_GRACE_S = 120.0


@dataclass(frozen=True)
class RayConfig:
    """Options of ``distill-serve serve --ray``.

    Attributes:
        address: Ray cluster to join ("auto": the local one ``ray start`` made), or None to
            start a local head in this process.
        replicas: fixed replica count (ignored when ``max_replicas`` is set).
        min_replicas, max_replicas: autoscaling bounds (None: no autoscaling).
        target_ongoing_requests: autoscaling's target of requests in flight per replica.
        cpus_per_replica, gpus_per_replica: Ray resources each replica reserves (fractional
            GPUs share a card: 0.25 puts four replicas on one GPU).
    """

    address: str | None = None
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    #: models one replica keeps loaded (Serve's ``max_num_models_per_replica``; 0: no limit)
    max_models_per_replica: int = 3
    #: the local head's Prometheus endpoint for Ray's metrics, ours among them (None: Ray's
    #: default, a free port)
    metrics_export_port: int | None = None
    #: the niceness of the local head's worker processes (replicas, Serve's proxy and
    #: controller). Ray's own default is 15, meant to keep its raylet ahead of user tasks;
    #: here the replicas are the workload, and at 15 any other busy process on the machine
    #: takes ~97 % of a shared core from them (a Serve start took minutes, the Ray tests
    #: 25+ min, under a CPU load). A cluster joined with ``address`` keeps its own setting.
    worker_niceness: int = 0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {self.replicas}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both --min-replicas and --max-replicas")
        if self.max_replicas is not None and not 0 <= (self.min_replicas or 0) <= self.max_replicas:
            raise ValueError("need 0 <= --min-replicas <= --max-replicas")
        if self.cpus_per_replica < 0 or self.gpus_per_replica < 0:
            raise ValueError("--cpus-per-replica and --gpus-per-replica must be >= 0")
        if not 0 <= self.worker_niceness <= 19:
            raise ValueError(f"worker_niceness must be in 0..19, got {self.worker_niceness}")
        if self.max_models_per_replica < 0:
            raise ValueError("--max-models-per-replica must be >= 0 (0: no limit)")

    def deployment_options(self, max_concurrent: int) -> dict[str, Any]:
        """Serve deployment options: replicas or autoscaling, resources, and enough
        ``max_ongoing_requests`` that the servicer's own limit answers RESOURCE_EXHAUSTED
        instead of Serve queueing the request."""
        options: dict[str, Any] = {
            "ray_actor_options": {
                "num_cpus": self.cpus_per_replica,
                "num_gpus": self.gpus_per_replica,
            },
            "max_ongoing_requests": max_concurrent + 4,
        }
        if self.max_replicas is not None:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            options["num_replicas"] = self.replicas
        return options


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
    proxy module calls. The ``ray`` extra pins Ray, and ``tests/test_ray.py`` kills a replica
    under load, so an upgrade that moves them fails a test instead of going unnoticed.
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


class _Aborted(Exception):
    """Raised by :meth:`_ServeContext.abort` after the status is set on Serve's context.

    A unary method catches it and returns (Serve sends the status set on the context); a
    streaming method lets it propagate, since Serve's proxy ignores the context's status when
    a stream ends normally, but keeps it when the stream raises.
    """


class _ServeContext:
    """grpc.aio's ``ServicerContext`` as the servicer uses it, on Serve's context."""

    def __init__(self, grpc_context: Any) -> None:
        self._ctx = grpc_context

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self._ctx.set_code(code)
        self._ctx.set_details(details)
        raise _Aborted(details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._ctx.set_trailing_metadata(list(metadata))  # Serve concatenates lists

    def invocation_metadata(self) -> Any:
        return self._ctx.invocation_metadata()


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
        def factory(root: Path) -> Engine:
            return Engine.from_dir(root, engine)

        self.metrics = metrics = Metrics()
        hooks = repository_hooks(metrics)
        if repository:
            self._models = ModelRepository(
                factory,
                models_dir=Path(source),
                default=default_model,
                grace_s=EVICTION_GRACE_S,
                hooks=hooks,
            )
        else:
            bundles = {Path(source).name: Path(source)}
            self._models = ModelRepository(factory, bundles=bundles, hooks=hooks)
        for entry in self._models.entries():
            metrics.model_state.labels(entry.name, entry.state.value).set(1)
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
            return await self._servicer.Generate(request, _ServeContext(grpc_context))
        except _Aborted:
            return pb.GenerateResponse()

    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, grpc_context: Any
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        if self._denied(grpc_context):
            raise _Aborted(UNAUTHENTICATED)  # a stream's status reaches the client only so
        name = await self._route(request.spec.model, grpc_context)
        if name is None:
            raise _Aborted("model names disagree")
        request.spec.model = name
        async for msg in self._servicer.GenerateStream(request, _ServeContext(grpc_context)):
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
            return await self._servicer.GetModelInfo(request, _ServeContext(grpc_context))
        except _Aborted:
            return pb.GetModelInfoResponse()

    async def ListModels(
        self, request: pb.ListModelsRequest, grpc_context: Any
    ) -> pb.ListModelsResponse:
        """The repository as the replica that answers sees it (states are per replica)."""
        if self._denied(grpc_context):
            return pb.ListModelsResponse()
        return await self._servicer.ListModels(request, _ServeContext(grpc_context))

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


def build_app(
    source: Path,
    engine: EngineConfig,
    limits: Limits,
    tokens: Sequence[str],
    ray: RayConfig,
    repository: bool = False,
    default_model: str | None = None,
) -> Any:
    """The Serve application for a bundle, or (``repository``) a model repository."""
    from ray import serve

    limit = ray.max_models_per_replica or -1  # Serve's "no limit"
    multiplexed = serve.multiplexed(max_num_models_per_replica=limit)(DistillDeployment.load_model)
    replica_class = type("DistillDeployment", (DistillDeployment,), {"get_model": multiplexed})
    deployment = serve.deployment(name="DistillDeployment")(replica_class)
    return deployment.options(**ray.deployment_options(limits.max_concurrent)).bind(
        str(source), engine, limits, tuple(tokens), repository, default_model
    )


def app_from_config(args: dict[str, Any]) -> Any:
    """The application for a Serve config file or KubeRay's ``RayService``:
    ``import_path: distill_serve.server.ray.serve:app_from_config`` with ``args``
    ``{bundle | models, default_model, max_models_per_replica, replicas, min_replicas,
    max_replicas, cpus_per_replica, gpus_per_replica, max_concurrent, use_cuda,
    gpu_mem_limit, tokens}`` (one of ``bundle`` and ``models``; the rest optional)."""
    known = {
        "bundle", "models", "default_model", "max_models_per_replica", "replicas",
        "min_replicas", "max_replicas", "cpus_per_replica", "gpus_per_replica",
        "max_concurrent", "use_cuda", "gpu_mem_limit", "tokens",
    }  # fmt: skip
    unknown = sorted(set(args) - known)
    if unknown or ("bundle" in args) == ("models" in args):
        raise ValueError(
            f"args need one of 'bundle' and 'models' and take {sorted(known)}; unknown: {unknown}"
        )
    ray_config = RayConfig(
        replicas=int(args.get("replicas", 1)),
        min_replicas=args.get("min_replicas"),
        max_replicas=args.get("max_replicas"),
        cpus_per_replica=float(args.get("cpus_per_replica", 1.0)),
        gpus_per_replica=float(args.get("gpus_per_replica", 0.0)),
        max_models_per_replica=int(args.get("max_models_per_replica", 3)),
    )
    engine = EngineConfig(
        use_cuda=bool(args.get("use_cuda", True)), gpu_mem_limit=args.get("gpu_mem_limit")
    )
    limits = Limits(max_concurrent=int(args.get("max_concurrent", 4)))
    repository = "models" in args
    return build_app(
        Path(args["models"] if repository else args["bundle"]),
        engine,
        limits,
        tuple(args.get("tokens", ())),
        ray_config,
        repository=repository,
        default_model=args.get("default_model"),
    )


def start(
    source: Path,
    engine: EngineConfig,
    limits: Limits,
    tokens: Sequence[str],
    ray_config: RayConfig,
    host: str,
    port: int,
    *,
    repository: bool = False,
    default_model: str | None = None,
) -> None:
    """Join or start Ray, start Serve's gRPC proxy on ``host:port`` and deploy the bundle
    (or, ``repository``, the model repository) ``source``."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    if not ray.is_initialized():
        ray.init(
            address=ray_config.address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=False,
            _metrics_export_port=ray_config.metrics_export_port,
            _system_config=(
                None
                if ray_config.address is not None
                else {"worker_niceness": ray_config.worker_niceness}
            ),
        )
    deadline = time.monotonic() + PROXY_START_S
    while True:
        try:
            serve.start(
                http_options=HTTPOptions(host=host, port=0),
                grpc_options=gRPCOptions(port=port, grpc_servicer_functions=SERVICER_FUNCTIONS),
            )
            break
        except TimeoutError as exc:  # the controller and its proxy stay; they are still starting
            if time.monotonic() > deadline:
                raise
            log.warning(
                "%s (Ray Serve's fixed limit; the node is busy?): waiting for the proxy, up to "
                "%.0f s in all",
                exc,
                PROXY_START_S,
            )
    app = build_app(source, engine, limits, tokens, ray_config, repository, default_model)
    serve.run(app, name=APP_NAME, route_prefix="/")
    _wait_for_port("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port, deadline)


def _wait_for_port(host: str, port: int, deadline: float) -> None:
    """Until the proxy accepts connections on ``host:port`` (TimeoutError at ``deadline``)."""
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Ray Serve's gRPC proxy is not listening on {host}:{port} after "
                    f"{PROXY_START_S:.0f} s"
                ) from None
            time.sleep(0.5)


def run(
    source: Path,
    engine: EngineConfig,
    limits: Limits,
    tokens: Sequence[str],
    ray_config: RayConfig,
    host: str,
    port: int,
    *,
    repository: bool = False,
    default_model: str | None = None,
) -> None:
    """``distill-serve serve --ray``: deploy, then wait for SIGTERM or SIGINT."""
    from ray import serve

    start(
        source, engine, limits, tokens, ray_config, host, port,
        repository=repository, default_model=default_model,
    )  # fmt: skip
    what = "models" if repository else "bundle"
    print(f"distill-serve on Ray Serve: gRPC on {host}:{port} ({what} {source})", flush=True)

    async def wait() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    asyncio.run(wait())
    serve.shutdown()
    print("distill-serve on Ray Serve stopped", flush=True)
