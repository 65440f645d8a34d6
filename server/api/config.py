"""Options of ``distill-serve serve`` (light: the CLI builds it without loading the engine)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from distill_serve.server.engine.config import EngineConfig
from distill_serve.server.models.source import ModelSource
from distill_serve.server.pipeline.request import Limits

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
        malloc_arenas: at most this many glibc malloc arenas (0: glibc's default);
            server/api/memory.py.
        trim_memory: give freed heap pages back to the system when generations end.
        http_port: the web edge's port (HTTP and WebSocket, the playground page; None: off;
            0 picks a free one). TLS and tokens as for gRPC.
        allowed_origins: web origins besides the edge's own whose pages may call it
            (``*``: any); others are refused (cross-site WebSocket hijacking).
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
    malloc_arenas: int = 2
    trim_memory: bool = True
    http_port: int | None = None
    allowed_origins: tuple[str, ...] = ()

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

    def model_source(self) -> ModelSource:
        """Where the models come from: ``--models DIR``, ``--bundle DIR`` or the demo."""
        return ModelSource(
            bundle=self.bundle,
            models_dir=self.models_dir,
            name=self.model_name,
            default_model=self.default_model,
            max_loaded=self.max_loaded_models,
            grace_s=self.grace_s,
        )

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
