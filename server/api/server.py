"""Server start-up: servicers, health, reflection, metrics, limits and signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from distill_serve.bundle import BundleError
from distill_serve.server.api.config import ServerConfig
from distill_serve.server.api.interceptors import (
    BearerTokenInterceptor,
    MalformedRequestInterceptor,
)
from distill_serve.server.api.logs import ERROR_LOGGERS, limit_error_logs
from distill_serve.server.api.memory import Trimmer, limit_arenas
from distill_serve.server.api.servicer import DistillServicer
from distill_serve.server.engine.engine import Engine
from distill_serve.server.models.build import (
    build_repository,
    engine_factory,
    repository_hooks,
    wire_metrics,
)
from distill_serve.server.models.demo import ensure_demo_bundle
from distill_serve.server.models.metrics import Metrics
from distill_serve.server.models.repository import ModelRepository
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DistillService"].full_name


class Edge(Protocol):
    """Another way in beside gRPC over the same server (the web edge, server/web/)."""

    async def start(self) -> str:
        """Listen; a line that says where."""

    async def stop(self) -> None:
        """Stop listening and end what still runs."""


class DistillServer:
    """A grpc.aio server with the Distill service, health and reflection, serving the models
    of a :class:`ModelRepository` (or the one ``engine`` given).

    Make it inside the event loop that will run it: grpc.aio binds a server to the loop
    that is current when it is created.
    """

    def __init__(
        self,
        config: ServerConfig,
        engine: Engine | None = None,
        metrics: Metrics | None = None,
        models: ModelRepository | None = None,
    ):
        self.config = config
        self.metrics = metrics or Metrics()
        if models is None:
            if engine is None:
                raise ValueError("give an engine or a model repository")
            models = ModelRepository(
                engine_factory(config.engine),
                bundles={},
                grace_s=config.grace_s,
                hooks=repository_hooks(self.metrics),
            )
            models.add_engine(engine_name(config, engine), engine)
        else:
            wire_metrics(models, self.metrics)
        self.models = models
        limit_error_logs(ERROR_LOGGERS)
        # grpc-stubs predates health.aio; it is grpcio-health-checking's asyncio servicer.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.servicer = DistillServicer(
            models, config.limits, self.metrics, Trimmer(config.trim_memory)
        )
        #: the token check (the web edge asks it too)
        self.auth = BearerTokenInterceptor(config.auth_tokens, config.admin_tokens)
        interceptors: list[grpc.aio.ServerInterceptor] = [
            self.auth,  # outermost: an unauthenticated call learns nothing more
            MalformedRequestInterceptor(),
        ]
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", config.max_receive_bytes),
                ("grpc.max_send_message_length", config.max_send_bytes),
            ],
        )
        pb_grpc.add_DistillServiceServicer_to_server(self.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = 0
        self._edges: list[Edge] = []

    async def add_edge(self, edge: Edge) -> str:
        """Start ``edge`` (another way in, over this server's servicer) and stop it in
        :meth:`stop`; the line that says where it listens."""
        line = await edge.start()
        self._edges.append(edge)
        return line

    @property
    def engine(self) -> Engine:
        """The default model's engine."""
        engine = self.models.entry("").engine
        if engine is None:
            raise BundleError(f"the default model {self.models.default_name} is not loaded")
        return engine

    async def start(self) -> int:
        address = f"{self.config.host}:{self.config.port}"
        credentials = self.config.server_credentials()
        self.port = (
            self._server.add_secure_port(address, credentials)
            if credentials is not None
            else self._server.add_insecure_port(address)
        )
        if self.port == 0:
            raise OSError(f"could not bind {self.config.host}:{self.config.port}")
        await self._server.start()
        for name in (SERVICE_NAME, ""):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Drain: report NOT_SERVING (to new health checks and watches alike), refuse new
        generations with UNAVAILABLE, let running ones go on for up to ``grace`` s; then
        stop the transport, cancelling what still runs."""
        grace = self.config.grace_s if grace is None else grace
        started = time.monotonic()
        await self.health.enter_graceful_shutdown()
        if not await self.servicer.drain(grace):
            log.info("drain: generations still running after %g s; ending them", grace)
        for edge in self._edges:  # what still runs there ends with the servicer
            await edge.stop()
        await self._server.stop(max(0.0, grace - (time.monotonic() - started)))
        self.servicer.close()

    async def reload(self, bundle: Path | None = None) -> Engine:
        """Load the default model again (from disk, or from ``bundle``) and serve new
        requests with it; in-flight streams finish on the old engine. A bundle that fails
        its checks is refused (BundleError) and the old one keeps serving."""
        entry = await self.models.load(self.models.default_name, bundle)
        if entry.engine is None or entry.reason:
            raise BundleError(entry.reason)
        log.info("reloaded bundle %s (%s)", entry.root, entry.version)
        return entry.engine

    async def wait(self) -> None:
        await self._server.wait_for_termination()


def engine_name(config: ServerConfig, engine: Engine) -> str:
    """The model name of a server built around one engine."""
    if config.default_model:
        return config.default_model
    return config.model_name if config.bundle is not None else engine.bundle.root.name


def build_engine(config: ServerConfig) -> Engine:
    """The engine for ``config.bundle`` (or the cached demo bundle)."""
    return Engine.from_dir(config.bundle or ensure_demo_bundle(), config.engine)


EdgeFactory = Callable[[DistillServer], Edge]


async def run(config: ServerConfig, edges: Sequence[EdgeFactory] = ()) -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight streams for ``grace_s``; ``edges``
    serve beside the gRPC server and stop after its drain."""
    limit_arenas(config.malloc_arenas)  # before the engines' and generations' threads start
    models = await asyncio.to_thread(build_repository, config.model_source(), config.engine)
    server = DistillServer(config, models=models)
    await models.load_all()
    if config.models_dir is None and models.entry("").engine is None:
        raise BundleError(models.entry("").reason)  # one bundle: it serves, or nothing
    port = await server.start()
    for factory in edges:
        print(await server.add_edge(factory(server)), flush=True)
    if config.metrics_port is not None:
        start_http_server(config.metrics_port, addr=config.host, registry=server.metrics.registry)
    if config.models_dir is None:
        engine = server.engine
        print(
            f"distill-serve listening on {config.host}:{port} "
            f"(bundle {engine.bundle.root}, provider {engine.primary_provider}, "
            f"vocoder path {engine.vocoder_path}"
            + (f", live capacity {engine.live_capacity}" if engine.live_capacity else "")
            + ")",
            flush=True,
        )
        if engine.provider_note:
            print(f"CUDA not serving: {engine.provider_note}", flush=True)
    else:
        for entry in models.entries():
            line = f"model {entry.name}: {entry.state.value}"
            if entry.engine is not None:
                e = entry.engine
                line += (
                    f" {entry.version} (provider {e.primary_provider}, vocoder path "
                    f"{e.vocoder_path}, live capacity {e.live_capacity})"
                )
            print(line + (f": {entry.reason}" if entry.reason else ""), flush=True)
        print(  # last: "listening on" tells scripts the models above are settled
            f"distill-serve listening on {config.host}:{port} (models {config.models_dir}, "
            f"default {models.default_name})",
            flush=True,
        )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def shutdown(signame: str) -> None:
        if not stopping:
            print(f"{signame}: draining for up to {config.grace_s:g} s", flush=True)
            stopping.append(loop.create_task(server.stop()))

    async def reload() -> None:
        if config.models_dir is not None:
            for change in await models.rescan() or ["no change"]:
                print(f"rescan: {change}", flush=True)
            return
        try:
            engine = await server.reload()
            print(
                f"SIGHUP: reloaded bundle {engine.bundle.root} ({engine.bundle.bundle_id})",
                flush=True,
            )
        except (BundleError, OSError) as exc:
            print(f"SIGHUP: reload refused, still serving the old bundle: {exc}", flush=True)

    async def poll(every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await reload()
            except OSError as exc:  # the directory went away: keep serving what is loaded
                print(f"rescan failed: {exc}", flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown, sig.name)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
    poller = loop.create_task(poll(config.poll_models_s)) if config.poll_models_s else None
    await server.wait()
    if stopping:
        await stopping[0]
    if poller is not None:
        poller.cancel()
    models.close()
    print("distill-serve stopped", flush=True)
