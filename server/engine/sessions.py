"""onnxruntime sessions on the CPU provider: options, a graph with its CPU session, and the
streaming graph's single-threaded step runner."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from distill_serve.server.engine.config import CPU, EngineConfig
from distill_serve.server.engine.scheduler import BatchRunner
from distill_serve.server.pipeline.runner import StreamState


def session_options(config: EngineConfig) -> ort.SessionOptions:
    """Options every session of the engine shares (threads, spinning, optimisation)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = config.cpu_mem_arena
    if config.intra_op_threads:
        opts.intra_op_num_threads = config.intra_op_threads
    spin = "1" if config.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return opts


def new_session(path: Path, config: EngineConfig, providers: list[Any]) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(config), providers=providers)


class Graph:
    """One graph: its file and its CPU session (always ready: the fallback of every path)."""

    def __init__(self, path: Path, config: EngineConfig) -> None:
        self.path = path
        self.cpu = new_session(path, config, [CPU])
        self.input_names = [i.name for i in self.cpu.get_inputs()]

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        """The graph's first output for ``inputs`` (in its input order), on CPU."""
        feeds = dict(zip(self.input_names, inputs, strict=True))
        return np.asarray(self.cpu.run(None, feeds)[0])


def step_options(config: EngineConfig) -> ort.SessionOptions:
    """Options of a streaming-graph session, on CPU or the primary path alike (a CPU re-run
    of a device batch then gives the stand-in's bits): single-threaded, no buffer reuse."""
    opts = session_options(config)
    opts.intra_op_num_threads = 1
    # onnxruntime's buffer-reuse planner is superlinear in a graph's dynamically shaped
    # values: 8 s to open the stand-in's step graph with it, 1.6 s without, and no
    # measurable change in step time or output (the arena still recycles memory).
    opts.enable_mem_reuse = False
    return opts


def stacked_states(states: Sequence[StreamState]) -> np.ndarray:
    """Host states, one per row, as the graph's ``(B, N)`` input."""
    rows = [s for s in states if isinstance(s, np.ndarray)]
    if len(rows) != len(states):
        raise TypeError("the CPU step runner takes host states; read pooled rows first")
    return np.stack(rows)


def step_runner(path: Path, config: EngineConfig) -> BatchRunner:
    """A single-threaded session of the streaming graph as a batch runner of host states
    (single-threaded so that a batched row equals the same step alone, bit for bit:
    server/engine/scheduler.py; several threads may run it at once, each on its own thread)."""
    session = ort.InferenceSession(str(path), step_options(config), providers=[CPU])
    # graphs exported before the ``end`` input (manifest without tail_frames) lack it
    takes_end = "end" in {i.name for i in session.get_inputs()}

    def run(
        mel: np.ndarray, position: np.ndarray, end: np.ndarray, states: Sequence[StreamState]
    ) -> tuple[np.ndarray, list[StreamState]]:
        feed = {"mel": mel, "position": position, "state": stacked_states(states)}
        if takes_end:
            feed["end"] = end
        audio, new = session.run(None, feed)
        return audio, list(new)

    return run
