"""The two small graphs of the serving engine's device-resident state pool
(``server/engine/state_pool.py``), written as package assets of the server.

The server extra has onnxruntime but not ``onnx``, so these graphs are made here, once, and
shipped as files in ``server/engine/graphs/``; ``tests/export/test_state_graphs.py`` checks
that the files are what this module makes, byte for byte. Both take any pool size ``P``,
state size ``N`` and batch ``B``:

- ``state_gather.onnx``: ``pool (P, N)``, ``rows (B,)`` -> ``state (B, N)``, the rows of a
  batch (``Gather`` on axis 0);
- ``state_scatter.onnx``: ``pool (P, N)``, ``rows (B,)``, ``state (B, N)`` -> ``pool_out
  (P, N)``, the batch's new states written into their rows (``ScatterND``). With the same
  buffer bound as ``pool`` and ``pool_out`` onnxruntime's ScatterND (CPU and CUDA) skips its
  copy of the pool and writes only the rows.

Run ``python -m distill_serve.export.state_graphs`` to write them again (after changing
them here), into the server package's folder or the one given.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import onnx
from onnx import TensorProto, helper

#: Opset and IR version of the pool graphs: old enough for any onnxruntime the server takes.
OPSET = 17
IR_VERSION = 8
#: file name -> graph
GATHER = "state_gather.onnx"
SCATTER = "state_scatter.onnx"


def _pool(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["P", "N"])


def _rows() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("rows", TensorProto.INT64, ["B"])


def _state() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("state", TensorProto.FLOAT, ["B", "N"])


def _model(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="distill-serve",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


def gather_graph() -> bytes:
    """``state = pool[rows]``."""
    node = helper.make_node("Gather", ["pool", "rows"], ["state"], axis=0)
    graph = helper.make_graph([node], "state_gather", [_pool("pool"), _rows()], [_state()])
    return _model(graph)


def scatter_graph() -> bytes:
    """``pool_out = pool`` with ``pool_out[rows] = state``."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Unsqueeze", ["rows", "axes"], ["indices"]),
        helper.make_node("ScatterND", ["pool", "indices", "state"], ["pool_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "state_scatter",
        [_pool("pool"), _rows(), _state()],
        [_pool("pool_out")],
        initializer=[axes],
    )
    return _model(graph)


def state_graphs() -> dict[str, bytes]:
    """Each pool graph's file name and bytes."""
    return {GATHER: gather_graph(), SCATTER: scatter_graph()}


def package_folder() -> Path:
    """Where the server package keeps them (the source tree in an editable install)."""
    return Path(str(resources.files("distill_serve.server.engine"))) / "graphs"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else package_folder()
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in state_graphs().items():
        (folder / name).write_bytes(data)
        print(f"wrote {folder / name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
