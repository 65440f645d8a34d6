"""The same gRPC service on Ray Serve: replicas, autoscaling and GPU sharing behind Serve's
gRPC proxy, from the same bundle (``distill-serve serve --ray``).

One servicer implementation serves both modes: each replica holds a
:class:`~distill_serve.server.api.servicer.DistillServicer` behind a
:class:`~distill_serve.server.ray.deployment.DistillDeployment` (``deployment.py``), which
adapts Serve's calling convention to it. This module configures and launches the
application.

Many models (``serve --ray --models DIR``) go through Serve's model multiplexing: every
replica has the whole repository and loads a model when a call for it comes
(``@serve.multiplexed`` around ``DistillDeployment.load_model``, at most
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
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distill_serve.server.engine.engine import EngineConfig
from distill_serve.server.pipeline.request import Limits
from distill_serve.server.ray.config import RayConfig
from distill_serve.server.ray.deployment import SERVICER_FUNCTIONS, DistillDeployment

log = logging.getLogger(__name__)

#: How long Serve's proxy may take to start. Serve itself gives up after a fixed 60 s
#: (``HTTP_PROXY_TIMEOUT``, not configurable), which a node with every core busy misses.
PROXY_START_S = 600.0

APP_NAME = "distill"


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
