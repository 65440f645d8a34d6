"""Writing torch modules as ONNX (dynamo exporter) and TorchScript graphs."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

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
    fold: bool = False,
) -> Path:
    """Export with the TorchScript-based exporter (``dynamo=False``), then check.

    For graphs of many small ops: the streaming vocoder (hundreds of state slices and
    concatenations) took 204 s with the dynamo exporter and 11.5 s this way, with the same
    output (137.8 dB against torch either way). The whole-clip vocoder too (``fold=True``):
    the stand-in's took 60-67 s with the dynamo exporter and its optimiser, 6.5 s this way
    and then :func:`fold_for_onnxruntime`, with the same parity (123.3 dB) and run time.
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
    if fold:
        fold_for_onnxruntime(path)
    onnx.checker.check_model(str(path), full_check=True)
    return path


def fold_for_onnxruntime(path: Path) -> Path:
    """Rewrite ``path`` with onnxruntime's basic graph optimisations (constant folding,
    redundant-node removal: standard ops only, independent of the hardware and provider) and
    symbolic shapes for every value; inputs and outputs keep their declared shapes.

    The TorchScript-based exporter writes thousands of ``Constant`` and ``Identity`` nodes and
    no intermediate shapes: onnxruntime would fold them again at every session start, and its
    buffer-reuse planner takes seconds over values without shapes (the stand-in vocoder: 2.6 s
    a session as exported, 0.1 s folded, as the dynamo exporter's graph).
    """
    original = onnx.load(str(path))
    with tempfile.TemporaryDirectory(prefix="distill-fold-") as tmp:
        folded_path = Path(tmp) / path.name
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(folded_path)
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        folded = onnx.load(str(folded_path))
    for declared, value in zip(original.graph.input, folded.graph.input, strict=True):
        value.type.CopyFrom(declared.type)
    for declared, value in zip(original.graph.output, folded.graph.output, strict=True):
        value.type.CopyFrom(declared.type)
    inferred = SymbolicShapeInference.infer_shapes(folded, auto_merge=True)
    onnx.save(inferred, str(path))
    return path
