"""Writing torch modules as ONNX (dynamo exporter) and TorchScript graphs."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import torch

ONNX_OPSET = 20


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """The dynamo exporter logs torchvision notes and prints progress; keep CLI output clean."""
    loggers = [
        logging.getLogger(n)
        for n in ("torch.onnx", "torch._export", "torch.export", "onnxscript", "onnx_ir")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    module: torch.nn.Module,
    example: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: Sequence[dict[int, Any]],
    path: Path,
) -> Path:
    """Export with ``torch.onnx.export(dynamo=True)`` as one self-contained file, then
    run ``onnx.checker`` on it.

    torch's own ONNX optimiser stays on (about half of each export's time: 52 s of the
    stand-in vocoder's against 22 s without it): onnxruntime's basic optimisations, tried
    instead, left 219 of the stand-in vocoder's 334 convolutions with a computed (``Expand``)
    bias, which the fp16 conversion needs as a constant (export/half.py).
    """
    with _quiet_exporter():
        torch.onnx.export(
            module,
            tuple(example),
            str(path),
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=tuple(dynamic_shapes),
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(str(path), full_check=True)
    return path


def export_torchscript(
    module: torch.nn.Module, example: Sequence[torch.Tensor], path: Path, script: bool = False
) -> Path:
    """``torch.jit.trace`` (or ``script`` for data-dependent indexing), then save."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.jit.script(module) if script else torch.jit.trace(module, tuple(example))
    graph.save(str(path))
    return path


def onnx_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Names, shapes (ints or symbolic names) and element types of a graph's inputs/outputs."""
    model = onnx.load(str(path), load_external_data=False)

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            tt = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
            out.append(
                {
                    "name": v.name,
                    "shape": dims,
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name,
                }
            )
        return out

    return describe(model.graph.input), describe(model.graph.output)


def export_onnx_traced(
    module: torch.nn.Module,
    example: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    path: Path,
    opset: int = 17,
) -> Path:
    """Export with the TorchScript-based exporter (``dynamo=False``), then check.

    For graphs of many small ops: the streaming vocoder (hundreds of state slices and
    concatenations) took 204 s with the dynamo exporter and 11.5 s this way, with the same
    output (137.8 dB against torch either way).
    """
    with _quiet_exporter():
        torch.onnx.export(
            module,
            tuple(example),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
        )
    onnx.checker.check_model(str(path), full_check=True)
    return path
