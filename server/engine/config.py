"""The engine's options: providers, threads, precision, vocoder path, live capacity."""

from __future__ import annotations

from dataclasses import dataclass

from distill_serve.bundle import VOCODER_ROLES

CPU = "CPUExecutionProvider"
CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
VOCODER_PATHS = ("auto", "block", "stream")


@dataclass(frozen=True)
class EngineConfig:
    """Execution-provider options.

    Attributes:
        use_cuda: try the CUDA execution provider first.
        gpu_mem_limit: CUDA arena limit in bytes (None: onnxruntime's default).
        cpu_mem_arena: onnxruntime's CPU memory arena (False: its tensors come from malloc,
            which gives them back when the server trims; benchmarks/memory.py).
        intra_op_threads: CPU threads per session (0: onnxruntime's default).
        fault_injection: build a primary path even without CUDA (on the CPU provider) so
            that :meth:`Engine.inject_oom` and ``inject_init_failures`` can exercise the
            fallbacks without a GPU.
        allow_spinning: let onnxruntime's idle worker threads spin. Off by default: the
            pipeline alternates between several sessions and numpy/scipy steps, and on two
            cores the spinning pools of one session starve the next (10 s requests took
            1.8-3.0 s with spinning, 1.8-2.3 s without, on the demo bundle).
        vocoder_precision: "fp32" (the exported graph) or "int8" (the bundle's
            ``vocoder_int8`` graph from ``distill-serve export --int8``).
        fixed_shapes: primary sessions per fixed shape (server/engine/cuda.py); None: on for CUDA,
            off for the fault-injection stand-in (whose audio then equals the CPU path's).
        cudnn_conv_algo_search: onnxruntime's cuDNN algorithm search (EXHAUSTIVE, HEURISTIC
            or DEFAULT); HEURISTIC is the cheapest that still picks fast kernels.
        primary_retry_s: how long to wait before building a failed primary path again
            (doubling up to 10 minutes).
        inject_init_failures: testing: the first N primary builds fail as a CUDA arena out of
            memory at session creation would (needs ``fault_injection``).
        vocoder_path: "stream" (the bundle's streaming vocoder graph, fed by the step
            scheduler: each frame vocoded once, steps of concurrent generations batched;
            ``server/engine/scheduler.py``), "block" (the whole-clip graph on blocks with context on
            both sides), or "auto": stream when the bundle has the graph and the precision is
            fp32 (on CUDA the steps batch on the device worker: device_steps.py).
        live_capacity: live sessions admitted at once on the stream path: None (default)
            measures it from the step graph's cost at start, N fixes it, 0 admits without
            limit (e.g. to measure where sessions really start to underrun).
        step_batch: the most streaming-graph steps the step scheduler runs together. None
            (default): on the device 32; on CPU 1 (``step_costs.py`` says why).
        state_pool_mb: device memory (MiB) for the streams' states on the device path, made
            at start (``state_pool.py``): a row per stream (full BigVGAN 5 MB, demo 0.78 MB),
            streams past its rows keep host states. 0: every batch carries its states to the
            device and back.
    """

    use_cuda: bool = True
    gpu_mem_limit: int | None = None
    cpu_mem_arena: bool = True
    intra_op_threads: int = 0
    fault_injection: bool = False
    allow_spinning: bool = False
    vocoder_precision: str = "fp32"
    fixed_shapes: bool | None = None
    cudnn_conv_algo_search: str = "HEURISTIC"
    primary_retry_s: float = 60.0
    inject_init_failures: int = 0
    vocoder_path: str = "auto"
    live_capacity: int | None = None
    step_batch: int | None = None
    state_pool_mb: int = 2048

    def __post_init__(self) -> None:
        if self.state_pool_mb < 0:
            raise ValueError(f"state_pool_mb must be >= 0, got {self.state_pool_mb}")
        if self.step_batch is not None and self.step_batch < 1:
            raise ValueError(f"step_batch must be >= 1 or None, got {self.step_batch}")
        if self.live_capacity is not None and self.live_capacity < 0:
            raise ValueError(f"live_capacity must be >= 0 or None, got {self.live_capacity}")
        if self.vocoder_path not in VOCODER_PATHS:
            raise ValueError(
                f"vocoder_path must be one of {list(VOCODER_PATHS)}, got {self.vocoder_path!r}"
            )
        if self.vocoder_path == "stream" and self.vocoder_precision != "fp32":
            raise ValueError(
                "the streaming vocoder graph is fp32: --vocoder-path stream needs "
                "--vocoder-precision fp32 (int8 and fp16 serve with --vocoder-path block)"
            )
        if self.vocoder_precision not in VOCODER_ROLES:
            raise ValueError(
                f"vocoder_precision must be one of {sorted(VOCODER_ROLES)}, "
                f"got {self.vocoder_precision!r}"
            )
        if self.cudnn_conv_algo_search not in CONV_ALGO_SEARCH:
            raise ValueError(
                f"cudnn_conv_algo_search must be one of {list(CONV_ALGO_SEARCH)}, "
                f"got {self.cudnn_conv_algo_search!r}"
            )
        if self.inject_init_failures and not self.fault_injection:
            raise ValueError("inject_init_failures needs fault_injection=True")
