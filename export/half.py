"""An fp16 vocoder graph for the GPU: convolutions in fp16, everything else in fp32.

The convolutions are nearly all of the vocoder's arithmetic, and tensor cores run them in
fp16; the Snake/SnakeBeta activations (``sin``, ``exp`` of log-scale parameters) and the
resampling between them stay in fp32, where fp16 would cost the most precision. Each
convolution gets ``Cast`` nodes around it and its weights are stored in fp16; the graph's
inputs and outputs stay fp32, so a server swaps it in without other changes.

onnxruntime's generic ``float16`` converter is not used: on the dynamo exporter's graphs it
emits duplicate node and value names (one per use of a shared scalar initializer) and the
result does not load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONV_OPS = ("Conv", "ConvTranspose")


@dataclass(frozen=True)
class HalfReport:
    """What :func:`half_convolutions` converted."""

    convolutions: int
    kept_fp32: int

    def to_dict(self) -> dict[str, int]:
        return {"fp16_convolutions": self.convolutions, "fp32_convolutions": self.kept_fp32}


def half_convolutions(src: Path, dst: Path) -> HalfReport:
    """Write ``src`` with every convolution whose weights are initializers in fp16."""
    model = onnx.load(str(src))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    halves: dict[str, str] = {}  # fp32 initializer -> its fp16 copy
    nodes = []
    converted = kept = 0
    for i, node in enumerate(graph.node):
        params = list(node.input[1:])
        if node.op_type not in CONV_OPS or not params or not all(p in weights for p in params):
            kept += node.op_type in CONV_OPS
            nodes.append(node)
            continue
        for p in params:
            if p not in halves:
                halves[p] = f"{p}__fp16"
                array = numpy_helper.to_array(weights[p]).astype(np.float16)
                graph.initializer.append(numpy_helper.from_array(array, halves[p]))
        tag = f"fp16_{i}"
        x16, y16, y = f"{node.input[0]}__{tag}", f"{node.output[0]}__{tag}", node.output[0]
        nodes.append(
            helper.make_node(
                "Cast", [node.input[0]], [x16], to=TensorProto.FLOAT16, name=f"{tag}_in"
            )
        )
        node.input[:] = [x16, *(halves[p] for p in params)]
        node.output[:] = [y16]
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [y16], [y], to=TensorProto.FLOAT, name=f"{tag}_out"))
        converted += 1
    del graph.node[:]
    graph.node.extend(nodes)
    still_used = {name for n in graph.node for name in n.input}
    kept_inits = [init for init in graph.initializer if init.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.value_info[:]  # shapes are inferred again; old fp32 annotations would clash
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return HalfReport(converted, kept)
