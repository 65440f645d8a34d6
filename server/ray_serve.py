"""The same gRPC service on Ray Serve: replicas, autoscaling and GPU sharing behind Serve's
gRPC proxy, from the same bundle (``distill-serve serve --ray``).

One servicer implementation serves both modes: each replica holds a
:class:`~distill_serve.server.service.DistillServicer` and :class:`DistillDeployment` only
adapts Serve's calling convention to it (the request context must be a parameter named
``grpc_context``, and Serve's context has no ``abort``: :class:`_ServeContext` turns an abort
into a status set on the context, after which the method returns).

What Serve's proxy does not offer: client-streaming and bidirectional RPCs (so no
``GenerateLive``; ray-project/ray#42488), server reflection, and interceptors (the bearer
token is checked here instead). Health (``grpc.health.v1.Health/Check``) is answered by the
deployment.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from distill_serve.client.v1 import distill_pb2 as pb
from distill_serve.server.engine import Engine, EngineConfig
from distill_serve.server.interceptors import token_valid
from distill_serve.server.metrics import Metrics
from distill_serve.server.repository import ModelRepository
from distill_serve.server.request import Limits
from distill_serve.server.service import RETRY_AFTER_MS, DistillServicer

log = logging.getLogger(__name__)

#: How long Serve's proxy may take to start. Serve itself gives up after a fixed 60 s
#: (``HTTP_PROXY_TIMEOUT``, not configurable), which a node with every core busy misses.
PROXY_START_S = 600.0

APP_NAME = "distill"
SERVICER_FUNCTIONS = [
    "distill_serve.server.ray_serve.add_distill_service_to_proxy",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]
UNAUTHENTICATED = "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'"


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

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"--replicas must be >= 1, got {self.replicas}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both --min-replicas and --max-replicas")
        if self.max_replicas is not None and not 0 <= (self.min_replicas or 0) <= self.max_replicas:
            raise ValueError("need 0 <= --min-replicas <= --max-replicas")
        if self.cpus_per_replica < 0 or self.gpus_per_replica < 0:
            raise ValueError("--cpus-per-replica and --gpus-per-replica must be >= 0")

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
    from distill_serve.client.v1.distill_pb2_grpc import add_DistillServiceServicer_to_server

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


class DistillDeployment:
    """One Serve replica: an engine for the bundle and the plain server's servicer."""

    def __init__(
        self, bundle: str, engine: EngineConfig, limits: Limits, tokens: Sequence[str]
    ) -> None:
        self._engine = Engine.from_dir(Path(bundle), engine)
        models = ModelRepository(lambda root: Engine.from_dir(root, engine), bundles={})
        models.add_engine(Path(bundle).name, self._engine)
        self._servicer = DistillServicer(models, limits, Metrics())
        self._tokens = [t.encode() for t in tokens]

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
        try:
            return await self._servicer.Generate(request, _ServeContext(grpc_context))
        except _Aborted:
            return pb.GenerateResponse()

    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, grpc_context: Any
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        if self._denied(grpc_context):
            raise _Aborted(UNAUTHENTICATED)  # a stream's status reaches the client only so
        async for msg in self._servicer.GenerateStream(request, _ServeContext(grpc_context)):
            yield msg

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, grpc_context: Any
    ) -> pb.GetModelInfoResponse:
        if self._denied(grpc_context):
            return pb.GetModelInfoResponse()
        return await self._servicer.GetModelInfo(request, _ServeContext(grpc_context))

    async def Check(self, request: Any, grpc_context: Any) -> Any:
        """grpc.health.v1 (open, like the plain server's)."""
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def build_app(
    bundle: Path, engine: EngineConfig, limits: Limits, tokens: Sequence[str], ray: RayConfig
) -> Any:
    """The Serve application for ``bundle``."""
    from ray import serve

    deployment = serve.deployment(name="DistillDeployment")(DistillDeployment)
    return deployment.options(**ray.deployment_options(limits.max_concurrent)).bind(
        str(bundle), engine, limits, tuple(tokens)
    )


def app_from_config(args: dict[str, Any]) -> Any:
    """The application for a Serve config file or KubeRay's ``RayService``:
    ``import_path: distill_serve.server.ray_serve:app_from_config`` with ``args``
    ``{bundle, replicas, min_replicas, max_replicas, cpus_per_replica, gpus_per_replica,
    max_concurrent, use_cuda, gpu_mem_limit, tokens}`` (all but ``bundle`` optional)."""
    known = {
        "bundle", "replicas", "min_replicas", "max_replicas", "cpus_per_replica",
        "gpus_per_replica", "max_concurrent", "use_cuda", "gpu_mem_limit", "tokens",
    }  # fmt: skip
    unknown = sorted(set(args) - known)
    if unknown or "bundle" not in args:
        raise ValueError(f"args need 'bundle' and take {sorted(known)}; unknown: {unknown}")
    ray_config = RayConfig(
        replicas=int(args.get("replicas", 1)),
        min_replicas=args.get("min_replicas"),
        max_replicas=args.get("max_replicas"),
        cpus_per_replica=float(args.get("cpus_per_replica", 1.0)),
        gpus_per_replica=float(args.get("gpus_per_replica", 0.0)),
    )
    engine = EngineConfig(
        use_cuda=bool(args.get("use_cuda", True)), gpu_mem_limit=args.get("gpu_mem_limit")
    )
    limits = Limits(max_concurrent=int(args.get("max_concurrent", 4)))
    return build_app(
        Path(args["bundle"]), engine, limits, tuple(args.get("tokens", ())), ray_config
    )


def start(
    bundle: Path,
    engine: EngineConfig,
    limits: Limits,
    tokens: Sequence[str],
    ray_config: RayConfig,
    host: str,
    port: int,
) -> None:
    """Join or start Ray, start Serve's gRPC proxy on ``host:port`` and deploy the bundle."""
    import ray
    from ray import serve
    from ray.serve.config import HTTPOptions, gRPCOptions

    if not ray.is_initialized():
        ray.init(
            address=ray_config.address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=False,
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
    app = build_app(bundle, engine, limits, tokens, ray_config)
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
    bundle: Path,
    engine: EngineConfig,
    limits: Limits,
    tokens: Sequence[str],
    ray_config: RayConfig,
    host: str,
    port: int,
) -> None:
    """``distill-serve serve --ray``: deploy, then wait for SIGTERM or SIGINT."""
    from ray import serve

    start(bundle, engine, limits, tokens, ray_config, host, port)
    print(f"distill-serve on Ray Serve: gRPC on {host}:{port} (bundle {bundle})", flush=True)

    async def wait() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    asyncio.run(wait())
    serve.shutdown()
    print("distill-serve on Ray Serve stopped", flush=True)
