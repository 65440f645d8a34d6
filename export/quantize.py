"""An int8 vocoder graph: static QDQ quantization of BigVGAN's dense convolutions.

What is quantized, and why (measured on the full 44 kHz model, 2 Zen 4 cores, ORT 1.31):

* the dense ``Conv`` nodes (~98 % of the FLOPs): int8 weights per output channel, uint8
  activations per tensor, calibrated (min/max) on the mels the server will feed. onnxruntime
  fuses each DequantizeLinear -> Conv -> QuantizeLinear into ``QLinearConv``, which runs on the
  AVX512-VNNI kernels at ~890 GOP/s against ~195 GFLOP/s for the fp32 convolutions;
* not the grouped convolutions of the anti-aliased activations: onnxruntime runs grouped
  ``QLinearConv`` through NHWC transposes, which made the whole graph 2x *slower* than fp32;
* not the first and last convolution (mel in, waveform out): keeping them fp32 raised the SNR
  against fp32 from 32.8 to 36.4 dB at no measurable cost;
* weights in 7 bits (``reduce_range``), so the result does not depend on the CPU. Without
  VNNI (AVX2, AVX512BW) onnxruntime adds pairs of u8 x s8 products in 16-bit registers
  (``vpmaddubsw``), which saturate once both are near full range: full-range weights measured
  38.1 dB on AVX512-VNNI but 34.2 dB on AVX2 on the stand-in (24.3 dB in an export made on a
  Zen 3), while 7-bit weights give 36.7 dB on both (the same to 0.01 dB on every case), at
  about the same speed: 1.07x fp32 against 1.13x for full range on the small stand-in, one run
  (``python -m benchmarks.int8_isa``; ``distill_serve/isa.py`` says which kernels run).

Dynamic quantization (``quantize_dynamic``: ConvInteger) was tried first and rejected: 0.44x
the fp32 speed here at 28 dB.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_vocoder` did (it goes into the manifest)."""

    method: str
    quantized_convs: int
    float_convs: int
    calibration_inputs: int
    calibration_frames: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, inputs: Sequence[np.ndarray]) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter([{name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


class _DropHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _no_preprocess_hint() -> Iterator[None]:
    """onnxruntime logs a hint about ``quant_pre_process`` on the root logger; symbolic shape
    inference cannot resolve the vocoder's dynamic time axis anyway, so drop the hint."""
    root = logging.getLogger()
    hint = _DropHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def _is_grouped(node: onnx.NodeProto) -> bool:
    return any(a.name == "group" and a.i > 1 for a in node.attribute)


def quantize_vocoder(
    source: Path,
    target: Path,
    calibration: Sequence[np.ndarray],
    input_name: str = "mel",
    reduce_range: bool = True,
) -> QuantizeReport:
    """Write an int8 (QDQ) copy of the fp32 vocoder graph ``source`` to ``target``.

    Args:
        calibration: ``(1, n_mels, frames)`` float32 mels, like the ones served. Keep them
            short: onnxruntime 1.31's calibrator holds every intermediate tensor of every
            input until the end (its ``CalibMaxIntermediateOutputs`` option discards data
            instead of merging it), ~70 MB per frame for the full 44 kHz model.
        reduce_range: 7-bit weights (the default; see the module docstring). False gives
            full-range weights, whose result depends on the CPU's int8 kernels.
    """
    if not calibration:
        raise ValueError("quantize_vocoder needs at least one calibration mel")
    graph = onnx.load(str(source), load_external_data=False).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    dense = [n for n in convs if not _is_grouped(n)]
    keep_float = [n.name for n in convs if _is_grouped(n)]
    if len(dense) > 2:
        keep_float += [dense[0].name, dense[-1].name]
    with _no_preprocess_hint():
        quantize_static(
            str(source),
            str(target),
            _Reader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["Conv"],
            nodes_to_exclude=keep_float,
            calibrate_method=CalibrationMethod.MinMax,
            reduce_range=reduce_range,
            calibration_providers=["CPUExecutionProvider"],
        )
    onnx.checker.check_model(str(target))
    return QuantizeReport(
        method=(
            f"static QDQ, int8 per-channel weights ({7 if reduce_range else 8}-bit range), "
            "uint8 per-tensor activations (min/max)"
        ),
        quantized_convs=len(convs) - len(keep_float),
        float_convs=len(keep_float),
        calibration_inputs=len(calibration),
        calibration_frames=int(sum(x.shape[-1] for x in calibration)),
    )
