"""Prometheus metrics of the server (one registry per server instance)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class Metrics:
    """Requests by mode and status, latency, time to first audio, fallbacks, active streams,
    the step scheduler and the model repository. Every series has a ``model`` label (the
    model's name; "unknown" for requests naming a model the server does not have)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "distill_requests",
            "Generate requests by RPC, mode and final status",
            ["model", "rpc", "mode", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "distill_request_latency_seconds",
            "Time from request to last audio byte",
            ["model", "rpc", "mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_audio = Histogram(
            "distill_time_to_first_audio_seconds",
            "Time from request to first audio block",
            ["model", "rpc", "mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "distill_cuda_fallbacks",
            "Requests rerun on CPU after a CUDA out-of-memory",
            ["model", "graph"],
            registry=r,
        )
        self.primary_failures = Counter(
            "distill_cuda_init_failures",
            "Times the CUDA sessions could not be created (the server then serves on CPU)",
            ["model"],
            registry=r,
        )
        self.active = Gauge(
            "distill_active_generations", "Generations running now", ["model", "rpc"], registry=r
        )
        self.rejected = Counter(
            "distill_rejected",
            "Requests refused before work started",
            ["model", "reason"],
            registry=r,
        )
        # Continuity of paced live sessions, measured where each block is sent: a listener
        # who plays the first block on arrival runs dry when a block comes after its playout
        # time (the audio sent before it, counted from the first block).
        self.live_late_blocks = Counter(
            "distill_live_blocks_late",
            "Live blocks sent after their playout time",
            ["model"],
            registry=r,
        )
        self.live_late_seconds = Counter(
            "distill_live_late_seconds",
            "Sum of how late live blocks were sent against their playout time",
            ["model"],
            registry=r,
        )
        self.live_ahead = Histogram(
            "distill_live_ahead_seconds",
            "Audio a live session had sent beyond real time when its next block went out",
            ["model"],
            buckets=(0.0, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0),
            registry=r,
        )
        self.live_interval = Histogram(
            "distill_live_block_interval_seconds",
            "Time between a live session's consecutive blocks (its cadence)",
            ["model"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0),
            registry=r,
        )
        # The streaming vocoder's step scheduler (server/engine/scheduler.py).
        self.step_queue = Gauge(
            "distill_vocoder_step_queue",
            "Vocoder steps waiting for a batch",
            ["model"],
            registry=r,
        )
        self.step_batch = Histogram(
            "distill_vocoder_step_batch_size",
            "Streams per batched vocoder run",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.step_misses = Counter(
            "distill_vocoder_step_deadline_misses",
            "Vocoder steps that started after their deadline",
            ["model"],
            registry=r,
        )
        self.step_cpu = Counter(
            "distill_vocoder_step_cpu_seconds",
            "CPU time the step runners spent in the streaming vocoder graph",
            ["model"],
            registry=r,
        )
        self.step_latency = Histogram(
            "distill_vocoder_step_latency_seconds",
            "Time from a vocoder step's submission to its result",
            ["model"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        # The device path's decoder runs (server/engine/row_batches.py).
        self.decoder_run = Histogram(
            "distill_decoder_run_generations",
            "Generations whose decoder rows shared one device run",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        # The device path's state pool (server/engine/state_pool.py).
        self.pool_rows = Gauge(
            "distill_state_pool_rows",
            "Streams whose vocoder states the device's state pool holds at most",
            ["model"],
            registry=r,
        )
        self.pool_in_use = Gauge(
            "distill_state_pool_rows_in_use",
            "Streams whose vocoder states are held on the device now",
            ["model"],
            registry=r,
        )
        self.pool_overflow = Counter(
            "distill_state_pool_overflow_steps",
            "Device steps that found no free pool row (their states crossed to the host)",
            ["model"],
            registry=r,
        )
        # The model repository (server/models/repository.py).
        self.model_state = Gauge(
            "distill_model_state",
            "1 for each model's current state (loading, ready, failed, unloading, unloaded)",
            ["model", "state"],
            registry=r,
        )
        self.model_loads = Counter(
            "distill_model_loads",
            "Model load attempts by outcome (ok, failed, refused: a reload kept the old one)",
            ["model", "outcome"],
            registry=r,
        )
        self.model_load_seconds = Histogram(
            "distill_model_load_seconds",
            "Time to load a model (verify the bundle, open its sessions)",
            ["model"],
            buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
            registry=r,
        )
        self.model_evictions = Counter(
            "distill_model_evictions",
            "Models unloaded to make room for another (--max-loaded-models)",
            ["model"],
            registry=r,
        )
