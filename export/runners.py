"""The two sides of a parity check as plain functions of numpy arrays: an onnxruntime graph
on CPU and a torch module, and a memo that runs the slow side once per input."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch


def ort_session(path: Path, mem_reuse: bool = True) -> ort.InferenceSession:
    """A CPU session; ``mem_reuse=False`` for the step graph, as the server opens it (the
    buffer-reuse planner takes seconds on its many dynamically shaped values)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_mem_reuse = mem_reuse
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_runner(path: Path) -> Callable[..., np.ndarray]:
    session = ort_session(path)
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, dict(zip(names, inputs, strict=True)))[0])

    return run


def memoised(run: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """``run`` with its outputs kept per input (shapes and bytes): the torch reference is the
    slow side of a parity check, and the ONNX, TorchScript and int8 graphs of one role are
    checked on the same cases."""
    outputs: dict[tuple[object, ...], np.ndarray] = {}

    def cached(*inputs: np.ndarray) -> np.ndarray:
        key = tuple(
            (x.shape, x.dtype.str, hashlib.sha1(np.ascontiguousarray(x).tobytes()).digest())
            for x in inputs
        )
        if key not in outputs:
            outputs[key] = run(*inputs)
        return outputs[key]

    return cached


def torch_runner(fn: Callable[..., torch.Tensor]) -> Callable[..., np.ndarray]:
    def run(*inputs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return fn(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs)).numpy()

    return run
