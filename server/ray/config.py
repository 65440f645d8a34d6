"""Options of ``distill-serve serve --ray`` (light: the CLI builds it without Ray)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
