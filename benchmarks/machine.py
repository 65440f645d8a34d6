"""What machine a benchmark ran on, and its fp32 peak, measured two ways.

* ``fma_peak_gflops``: the arithmetic peak. ``native/fma_peak.c`` (12 independent chains of
  512-bit FMAs, no memory traffic) is compiled with the system C compiler and run as one
  process per core at once; the sum is the machine's fp32 FMA throughput at the clock it really
  runs (turbo and VM included). On the 2-core Zen 4 VM: ~117 GFLOP/s a core, 234 in all.
* ``sgemm_4096_gflops``: what a BLAS reaches on a large matmul (numpy's OpenBLAS), the
  practical ceiling for convolutions lowered to GEMM.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_features() -> dict[str, Any]:
    """CPU family/model numbers (family 25 model 17 is AMD Zen 4 "Genoa") and the vector
    extensions that matter here."""
    fields = _cpuinfo()
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return {
        "cpu_family": fields.get("cpu family"),
        "cpu_model_number": fields.get("model"),
        "vector_extensions": [f for f in wanted if f in flags],
    }


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or "unknown"


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


FMA_SOURCE = Path(__file__).with_name("native") / "fma_peak.c"


def fma_peak_gflops(cores: int | None = None, iterations: int = 200_000_000) -> float | None:
    """Sum over ``cores`` simultaneous single-thread FMA kernels; None without a C compiler
    or AVX-512 (the kernel uses AVX-512F intrinsics)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or "avx512f" not in cpu_features()["vector_extensions"]:
        return None
    with tempfile.TemporaryDirectory(prefix="fma-") as tmp:
        exe = Path(tmp) / "fma_peak"
        subprocess.run(
            [cc, "-O2", "-mavx512f", "-mfma", str(FMA_SOURCE), "-o", str(exe)], check=True
        )
        procs = [
            subprocess.Popen([str(exe), str(iterations)], stdout=subprocess.PIPE, text=True)
            for _ in range(cores or os.cpu_count() or 1)
        ]
        outs = [p.communicate()[0] for p in procs]
    return sum(float(out.split()[0]) for out in outs)


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far, in clock ticks by kind (``/proc/stat``'s ``cpu`` line:
    user, nice, system, idle, iowait, irq, softirq, steal, ...); empty where there is none."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0]
    except (OSError, IndexError):
        return []
    return [int(v) for v in line.split()[1:]]


def steal_share(before: list[int], after: list[int]) -> float | None:
    """The share of the CPU time between two :func:`cpu_ticks` that the hypervisor gave to
    other guests (steal): a run with much of it measured a slower machine than it names."""
    if len(before) < 8 or len(after) < 8:
        return None
    delta = [a - b for a, b in zip(after[:8], before[:8], strict=True)]
    return delta[7] / sum(delta) if sum(delta) else None


def describe(peak: bool = True) -> dict[str, Any]:
    import onnxruntime as ort

    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        **cpu_features(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_available_providers": ort.get_available_providers(),
        "gpu": None,
    }
    if peak:
        fma = fma_peak_gflops()
        info["fma_peak_gflops"] = round(fma, 1) if fma else None
        info["sgemm_4096_gflops"] = round(sgemm_peak_gflops(), 1)
    return info
