"""Prometheus metrics of the server (one registry per server instance)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class Metrics:
    """Requests by mode and status, latency, time to first audio, fallbacks, active streams."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "distill_requests",
            "Generate requests by RPC, mode and final status",
            ["rpc", "mode", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "distill_request_latency_seconds",
            "Time from request to last audio byte",
            ["rpc", "mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_audio = Histogram(
            "distill_time_to_first_audio_seconds",
            "Time from request to first audio block",
            ["rpc", "mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "distill_cuda_fallbacks",
            "Requests rerun on CPU after a CUDA out-of-memory",
            ["graph"],
            registry=r,
        )
        self.primary_failures = Counter(
            "distill_cuda_init_failures",
            "Times the CUDA sessions could not be created (the server then serves on CPU)",
            registry=r,
        )
        self.active = Gauge(
            "distill_active_generations", "Generations running now", ["rpc"], registry=r
        )
        self.rejected = Counter(
            "distill_rejected", "Requests refused before work started", ["reason"], registry=r
        )
        # The streaming vocoder's step scheduler (server/scheduler.py).
        self.step_queue = Gauge(
            "distill_vocoder_step_queue", "Vocoder steps waiting for a batch", registry=r
        )
        self.step_batch = Histogram(
            "distill_vocoder_step_batch_size",
            "Streams per batched vocoder run",
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.step_misses = Counter(
            "distill_vocoder_step_deadline_misses",
            "Vocoder steps that started after their deadline",
            registry=r,
        )
        self.step_latency = Histogram(
            "distill_vocoder_step_latency_seconds",
            "Time from a vocoder step's submission to its result",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
