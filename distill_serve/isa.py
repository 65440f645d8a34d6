"""Which integer kernels onnxruntime picks on this CPU (for the int8 vocoder's parity record).

onnxruntime's MLAS chooses its u8 x s8 GEMM kernel from cpuid at start-up, and the choice
changes the int8 result: with AVX512-VNNI (``vpdpbusd``, 32-bit accumulation) or ARM's dot
product instructions every product is summed exactly; with plain AVX2 or AVX512BW it uses
``vpmaddubsw``, which adds pairs of u8 x s8 products in a 16-bit register and saturates
(onnxruntime's quantization docs; OpenVINO's "saturation issue"). An int8 graph measured on one
kind can therefore sound different on another, so the export records the kind it measured on
and the server warns when it serves on another.

The features come from numpy's own cpuid probe (``__cpu_features__``), which sees what
onnxruntime sees, under an emulator too, where ``/proc/cpuinfo`` shows the host.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass


def _numpy_features() -> dict[str, bool]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__  # type: ignore[no-redef]
    return {str(k): bool(v) for k, v in __cpu_features__.items()}


@dataclass(frozen=True)
class CpuKind:
    """The CPU facts that decide onnxruntime's int8 kernels.

    Attributes:
        machine: ``platform.machine()`` (x86_64, aarch64, ...).
        int8_kernels: the family MLAS uses for u8 x s8 products: "avx512-vnni", "avx-vnni"
            or "arm64-dotprod" (exact sums), "avx512bw" or "avx2" (16-bit pair sums that
            saturate), or "other".
        features: the vector extensions numpy detected (sorted).
    """

    machine: str
    int8_kernels: str
    features: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "int8_kernels": self.int8_kernels,
            "features": list(self.features),
        }


def int8_family(features: dict[str, bool], machine: str) -> str:
    """The int8 kernel family for numpy's feature flags on ``machine``."""
    if machine.lower() in ("x86_64", "amd64"):
        if features.get("AVX512VNNI") and features.get("AVX512BW"):
            return "avx512-vnni"
        if features.get("AVXVNNI") or features.get("AVX_VNNI"):
            return "avx-vnni"
        if features.get("AVX512BW"):
            return "avx512bw"
        if features.get("AVX2"):
            return "avx2"
        return "other"
    if machine.lower() in ("aarch64", "arm64"):
        return "arm64-dotprod" if features.get("ASIMDDP") else "other"
    return "other"


def cpu_kind() -> CpuKind:
    """This process's CPU as onnxruntime's int8 kernels see it."""
    features = _numpy_features()
    machine = platform.machine()
    return CpuKind(
        machine=machine,
        int8_kernels=int8_family(features, machine),
        features=tuple(sorted(k for k, v in features.items() if v)),
    )


def int8_mismatch(parity: dict[str, object] | None, here: CpuKind) -> str | None:
    """Why the int8 parity recorded in a manifest (its ``parity["vocoder.int8.onnx"]``
    entry) may not hold on ``here``, or None when it was measured on the same kernel family.
    """
    measured = (parity or {}).get("measured_on")
    snr = (parity or {}).get("min_snr_db")
    figure = f"{snr:.1f} dB" if isinstance(snr, int | float) else "its SNR"
    advice = (
        "measure it here (python -m benchmarks.int8_isa, or re-export with --int8 on this "
        "machine) or serve with --vocoder-precision fp32"
    )
    if not isinstance(measured, dict):
        return (
            f"the int8 vocoder's parity ({figure}) does not say which CPU it was measured on "
            f"(exported before distill-serve recorded it); this CPU uses {here.int8_kernels} "
            f"int8 kernels: {advice}"
        )
    theirs = measured.get("int8_kernels")
    if theirs == here.int8_kernels and measured.get("machine") == here.machine:
        return None
    return (
        f"the int8 vocoder's parity ({figure}) was measured with {theirs} int8 kernels on "
        f"{measured.get('machine')}; this CPU uses {here.int8_kernels} on {here.machine}, "
        f"whose int8 results differ: {advice}"
    )
