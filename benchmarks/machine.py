"""What machine a benchmark ran on, and its practical fp32 matmul peak."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sgemm_peak_gflops(n: int = 4096, repeats: int = 3) -> float:
    """fp32 GFLOP/s of numpy's BLAS on an n x n matmul (the practical peak we compare to)."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def describe(peak: bool = True) -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_available_providers": ort.get_available_providers(),
        "gpu": None,
    }
    if peak:
        info["sgemm_4096_gflops"] = round(sgemm_peak_gflops(), 1)
    return info
