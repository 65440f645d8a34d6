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
from distill_serve.server.api.interceptors import (
    BearerTokenInterceptor,
    MalformedRequestInterceptor,
)
from distill_serve.server.api.servicer import DistillServicer
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.models.metrics import Metrics
from distill_serve.server.models.repository import ModelRepository, ModelState, RepositoryHooks
from distill_serve.server.pipeline.request import Limits
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DistillService"].full_name
MiB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    """Options of ``distill-serve serve``.

    Attributes:
        bundle: bundle dir; None builds (once) and caches the demo bundle.
        models_dir: a model repository (one bundle per subdirectory); replaces ``bundle``.
        default_model: the model of requests that name none (None: the bundle's, or the
            repository's first by name).
        max_loaded_models: most models loaded at once (0: no limit; LRU eviction).
        poll_models_s: rescan the repository every this many seconds (None: on SIGHUP only).
        host, port: where to listen (port 0 picks a free one).
        limits: duration, concurrency and steps_between limits.
        engine: execution-provider options.
        metrics_port: Prometheus HTTP port (None: no endpoint; metrics still kept).
        grace_s: how long SIGTERM waits for in-flight streams.
        max_receive_bytes, max_send_bytes: gRPC message size limits.
        tls_cert, tls_key: PEM server certificate and key (both or neither): TLS on.
        tls_client_ca: PEM CA bundle; when set, clients must present a certificate it signed.
        auth_tokens: bearer tokens accepted (empty: no token check). Health stays open.
        admin_tokens: bearer tokens that may also load and unload models (LoadModel,
            UnloadModel); with none, model control over gRPC is refused.
    """

    bundle: Path | None = None
    models_dir: Path | None = None
    default_model: str | None = None
    max_loaded_models: int = 0
    poll_models_s: float | None = None
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
    admin_tokens: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.bundle is not None and self.models_dir is not None:
            raise ValueError("give --bundle or --models, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")

    @property
    def model_name(self) -> str:
        """The one model's name when serving a bundle: its directory's ("demo" for the
        demo bundle)."""
        return self.bundle.name if self.bundle is not None else "demo"

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
    return Path(root) / "demo-bundle-v8"


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


def repository_hooks(metrics: Metrics) -> RepositoryHooks:
    """A repository's events in ``metrics``: loads and their time, evictions, states, and
    every engine it makes ready attached (:func:`attach_engine`). A plain server and each
    Ray replica wire their repository so."""
    m = metrics

    def on_load(name: str, seconds: float, outcome: str) -> None:
        m.model_loads.labels(name, outcome).inc()
        if outcome == "ok":
            m.model_load_seconds.labels(name).observe(seconds)

    def on_state(name: str, state: ModelState) -> None:
        for s in ModelState:
            m.model_state.labels(name, s.value).set(1 if s is state else 0)

    return RepositoryHooks(
        on_engine=lambda name, engine: attach_engine(m, name, engine),
        on_load=on_load,
        on_evict=lambda name: m.model_evictions.labels(name).inc(),
        on_state=on_state,
    )


def attach_engine(metrics: Metrics, name: str, engine: Engine) -> None:
    """Count the engine's CUDA fallbacks and failed CUDA starts in ``metrics`` (a failure
    before the server existed counts once, here), and its step scheduler's runs, under its
    model's name."""
    m = metrics
    engine.on_fallback = lambda graph: m.fallbacks.labels(name, graph).inc()
    engine.on_primary_failure = lambda reason: m.primary_failures.labels(name).inc()
    if engine.provider_note and not engine.has_primary:
        m.primary_failures.labels(name).inc()
    if (scheduler := engine.scheduler) is not None:

        def on_run(batch: int, seconds: float, cpu_seconds: float, missed: int) -> None:
            m.step_batch.labels(name).observe(batch)
            m.step_cpu.labels(name).inc(cpu_seconds)
            if missed:
                m.step_misses.labels(name).inc(missed)

        scheduler.on_run = on_run
        scheduler.on_queue = m.step_queue.labels(name).set
        scheduler.on_step = m.step_latency.labels(name).observe


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
                self._engine_for,
                bundles={},
                grace_s=config.grace_s,
                hooks=repository_hooks(self.metrics),
            )
            models.add_engine(engine_name(config, engine), engine)
        else:
            models.hooks = repository_hooks(self.metrics)
            for entry in models.entries():
                if entry.engine is not None:
                    attach_engine(self.metrics, entry.name, entry.engine)
                self.metrics.model_state.labels(entry.name, entry.state.value).set(1)
        self.models = models
        # grpc-stubs predates health.aio; it is grpcio-health-checking's asyncio servicer.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.servicer = DistillServicer(models, config.limits, self.metrics)
        interceptors: list[grpc.aio.ServerInterceptor] = [
            # outermost: an unauthenticated call learns nothing more
            BearerTokenInterceptor(config.auth_tokens, config.admin_tokens),
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

    def _engine_for(self, root: Path) -> Engine:
        return Engine.from_dir(root, self.config.engine)

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
        """Report NOT_SERVING, refuse new RPCs, let in-flight ones run for ``grace`` s."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.config.grace_s if grace is None else grace)
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


def build_models(config: ServerConfig) -> ModelRepository:
    """The repository ``config`` asks for: ``--models DIR``, ``--bundle DIR`` or the demo."""

    def factory(root: Path) -> Engine:
        return Engine.from_dir(root, config.engine)

    if config.models_dir is not None:
        return ModelRepository(
            factory,
            models_dir=config.models_dir,
            default=config.default_model,
            max_loaded=config.max_loaded_models,
            grace_s=config.grace_s,
        )
    root = config.bundle or ensure_demo_bundle()
    return ModelRepository(factory, bundles={config.model_name: root}, grace_s=config.grace_s)


def build_engine(config: ServerConfig) -> Engine:
    """The engine for ``config.bundle`` (or the cached demo bundle)."""
    return Engine.from_dir(config.bundle or ensure_demo_bundle(), config.engine)


async def run(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then drain in-flight streams for ``grace_s``."""
    models = await asyncio.to_thread(build_models, config)
    server = DistillServer(config, models=models)
    await models.load_all()
    if config.models_dir is None and models.entry("").engine is None:
        raise BundleError(models.entry("").reason)  # one bundle: it serves, or nothing
    port = await server.start()
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
