"""Server start-up: servicers, health, reflection, metrics, limits and signals."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from distill_serve.bundle import BundleError, load_bundle
from distill_serve.client.v1 import distill_pb2 as pb
from distill_serve.client.v1 import distill_pb2_grpc as pb_grpc
from distill_serve.server.engine import Engine, EngineConfig
from distill_serve.server.interceptors import BearerTokenInterceptor, MalformedRequestInterceptor
from distill_serve.server.metrics import Metrics
from distill_serve.server.request import Limits
from distill_serve.server.service import DistillServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DistillService"].full_name
MiB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    """Options of ``distill-serve serve``.

    Attributes:
        bundle: bundle dir; None builds (once) and caches the demo bundle.
        host, port: where to listen (port 0 picks a free one).
        limits: duration, concurrency and steps_between limits.
        engine: execution-provider options.
        metrics_port: Prometheus HTTP port (None: no endpoint; metrics still kept).
        grace_s: how long SIGTERM waits for in-flight streams.
        max_receive_bytes, max_send_bytes: gRPC message size limits.
        tls_cert, tls_key: PEM server certificate and key (both or neither): TLS on.
        tls_client_ca: PEM CA bundle; when set, clients must present a certificate it signed.
        auth_tokens: bearer tokens accepted (empty: no token check). Health stays open.
    """

    bundle: Path | None = None
    host: str = "127.0.0.1"
    port: int = 50051
    limits: Limits = field(default_factory=Limits)
    engine: EngineConfig = field(default_factory=EngineConfig)
    metrics_port: int | None = None
    grace_s: float = 10.0
    max_receive_bytes: int = 1 * MiB
    max_send_bytes: int = 256 * MiB
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials, or None for plaintext."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        ca = self.tls_client_ca.read_bytes() if self.tls_client_ca else None
        return grpc.ssl_server_credentials(
            [(self.tls_key.read_bytes(), self.tls_cert.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )


def demo_bundle_dir() -> Path:
    """Where the demo bundle is cached (``$DISTILL_SERVE_CACHE`` or ``~/.cache``)."""
    root = os.environ.get("DISTILL_SERVE_CACHE") or Path.home() / ".cache" / "distill-serve"
    return Path(root) / "demo-bundle-v7"


def ensure_demo_bundle(path: Path | None = None) -> Path:
    """Return a verified demo bundle, exporting it first if the cache has none."""
    path = path or demo_bundle_dir()
    try:
        load_bundle(path)
        return path
    except BundleError:
        pass
    try:
        from distill_serve.export.demo import export_demo_bundle
    except ImportError as exc:
        raise BundleError(
            f"no demo bundle at {path} and the export extra is not installed ({exc}); "
            "pip install 'distill-serve[export]' or pass --bundle DIR"
        ) from exc
    log.info("building the demo bundle in %s (once; under a minute)", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=path.parent))
    try:
        export_demo_bundle(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


class DistillServer:
    """A grpc.aio server with the Distill service, health and reflection.

    Make it inside the event loop that will run it: grpc.aio binds a server to the loop
    that is current when it is created.
    """

    def __init__(self, config: ServerConfig, engine: Engine, metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics or Metrics()
        self.engine = self._attach(engine)
        # grpc-stubs predates health.aio; it is grpcio-health-checking's asyncio servicer.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.servicer = DistillServicer(engine, config.limits, self.metrics)
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if config.auth_tokens:  # outermost: an unauthenticated call learns nothing more
            interceptors.append(BearerTokenInterceptor(config.auth_tokens))
        interceptors.append(MalformedRequestInterceptor())
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

    def _attach(self, engine: Engine) -> Engine:
        """Count the engine's CUDA fallbacks and failed CUDA starts in this server's metrics
        (a failure before the server existed counts once, here)."""
        engine.on_fallback = lambda graph: self.metrics.fallbacks.labels(graph).inc()
        engine.on_primary_failure = lambda reason: self.metrics.primary_failures.inc()
        if engine.provider_note and not engine.has_primary:
            self.metrics.primary_failures.inc()
        if (scheduler := engine.scheduler) is not None:
            m = self.metrics

            def on_run(batch: int, seconds: float, missed: int) -> None:
                m.step_batch.observe(batch)
                if missed:
                    m.step_misses.inc(missed)

            scheduler.on_run = on_run
            scheduler.on_queue = m.step_queue.set
            scheduler.on_step = m.step_latency.observe
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
        """Report NOT_SERVING, refuse new RPCs, let in-flight ones run for ``grace`` s."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.config.grace_s if grace is None else grace)
        self.servicer.close()

    async def reload(self, bundle: Path | None = None) -> Engine:
        """Load ``bundle`` (default: the current one, re-read from disk) and serve new
        requests with it; in-flight streams finish on the old engine. A bundle that fails
        its checks is refused and the old one keeps serving."""
        root = bundle or self.engine.bundle.root
        engine = await asyncio.to_thread(Engine.from_dir, root, self.config.engine)
        self.engine = self._attach(engine)
        self.servicer.swap_engine(engine)
        log.info("reloaded bundle %s (%s)", root, engine.bundle.bundle_id)
        return engine

    async def wait(self) -> None:
        await self._server.wait_for_termination()


def build_engine(config: ServerConfig) -> Engine:
    """The engine for ``config.bundle`` (or the cached demo bundle)."""
    return Engine.from_dir(config.bundle or ensure_demo_bundle(), config.engine)


async def run(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight streams for ``grace_s``."""
    engine = await asyncio.to_thread(build_engine, config)
    server = DistillServer(config, engine)
    port = await server.start()
    if config.metrics_port is not None:
        start_http_server(config.metrics_port, addr=config.host, registry=server.metrics.registry)
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
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def shutdown(signame: str) -> None:
        if not stopping:
            print(f"{signame}: draining for up to {config.grace_s:g} s", flush=True)
            stopping.append(loop.create_task(server.stop()))

    async def reload() -> None:
        try:
            engine = await server.reload()
            print(
                f"SIGHUP: reloaded bundle {engine.bundle.root} ({engine.bundle.bundle_id})",
                flush=True,
            )
        except (BundleError, OSError) as exc:
            print(f"SIGHUP: reload refused, still serving the old bundle: {exc}", flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown, sig.name)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
    await server.wait()
    if stopping:
        await stopping[0]
    print("distill-serve stopped", flush=True)
