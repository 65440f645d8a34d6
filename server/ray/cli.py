"""``distill-serve serve --ray``'s options, each bound once to the :class:`RayConfig` field
it sets, and the launch from a plain server's config."""

from __future__ import annotations

import argparse

from distill_serve.options import field_option, fields_from
from distill_serve.server.api.config import ServerConfig
from distill_serve.server.ray.config import RayConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    R = RayConfig
    ray = p.add_argument_group("Ray Serve (--ray; needs distill-serve[ray])")
    ray.add_argument("--ray", action="store_true", help="serve as Ray Serve replicas")
    field_option(ray, R, "replicas", "--replicas", type=int, help="fixed number of replicas")
    field_option(ray, R, "min_replicas", "--min-replicas", type=int, help="autoscaling lower bound")
    field_option(ray, R, "max_replicas", "--max-replicas", type=int, help="autoscaling upper bound")
    field_option(
        ray, R, "target_ongoing_requests", "--target-ongoing-requests", type=float,
        help="autoscaling target of requests in flight per replica",
    )  # fmt: skip
    field_option(
        ray, R, "address", "--ray-address",
        help="cluster to join ('auto'); default: a local head",
    )  # fmt: skip
    field_option(ray, R, "cpus_per_replica", "--cpus-per-replica", type=float)
    field_option(
        ray, R, "gpus_per_replica", "--gpus-per-replica", type=float,
        help="fractional shares one GPU (0.25)",
    )  # fmt: skip
    field_option(
        ray, R, "max_models_per_replica", "--max-models-per-replica", type=int,
        help="with --models: models one replica keeps loaded (Serve's multiplexing; 0: all)",
    )  # fmt: skip
    field_option(
        ray, R, "metrics_export_port", "--ray-metrics-port", type=int,
        help="Prometheus port of the local Ray head's metrics, ours among them (ray_distill_*)",
    )  # fmt: skip


def run(args: argparse.Namespace, config: ServerConfig) -> None:
    """The same servicer as Ray Serve replicas behind Serve's gRPC proxy (raises ValueError
    with what to do when Ray or an option does not fit)."""
    try:
        from distill_serve.server.ray import serve as ray_serve
    except ImportError as exc:
        raise ValueError(
            f"--ray needs Ray Serve: pip install 'distill-serve[ray]' ({exc})"
        ) from exc
    from distill_serve.server.models.demo import ensure_demo_bundle

    if config.tls_cert is not None:
        raise ValueError("--ray: Serve's gRPC proxy has no TLS; terminate TLS in front of it")
    ray_config = RayConfig(**fields_from(args, RayConfig))
    repository = config.models_dir is not None
    source = config.models_dir or config.bundle or ensure_demo_bundle()
    ray_serve.run(
        source, config.engine, config.limits, config.auth_tokens, ray_config, config.host,
        config.port, repository=repository, default_model=config.default_model,
    )  # fmt: skip
