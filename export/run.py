"""One export in progress: the record its stages share (where files go, the files written,
their parity and export times, the progress bar), and the common way a graph is exported and
checked against its torch module."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from distill_serve.bundle import BundleFile, sha256_file
from distill_serve.export.config import ExportConfig
from distill_serve.export.graphs import (
    export_onnx,
    export_onnx_traced,
    export_torchscript,
    onnx_io,
)
from distill_serve.export.parity import ParityResult, check_parity
from distill_serve.export.runners import memoised, ort_runner, torch_runner

#: Parity cases: ``(name, inputs)`` with numpy inputs in the graph's input order.
Cases = Sequence[tuple[str, Sequence[np.ndarray]]]


class Progress:
    """Progress over the export's long steps (a tqdm bar on stderr)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = tqdm(total=total, disable=not enabled, unit="step", desc="export")

    def step(self, label: str) -> None:
        self._bar.set_description(label)
        self._bar.update(0)

    def done(self) -> None:
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


@dataclass
class ExportRun:
    """What the stages of one export share."""

    config: ExportConfig
    progress: Progress
    rng: np.random.Generator
    files: list[BundleFile] = field(default_factory=list)
    parity: dict[str, ParityResult] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.config.out

    @property
    def want_torchscript(self) -> bool:
        return self.config.format in ("torchscript", "both")

    def add(self, path: Path, role: str, fmt: str, rate: int | None = None) -> None:
        """Record a written file: its role, format, hash and (ONNX) inputs and outputs."""
        inputs, outputs = onnx_io(path) if fmt == "onnx" else ([], [])
        self.files.append(
            BundleFile(path.name, role, fmt, sha256_file(path), inputs, outputs, rate)
        )

    def timed(self, name: str, started: float) -> None:
        self.timings[name] = round(time.perf_counter() - started, 2)

    def check(
        self, path: Path, role: str, cases: Cases, reference: Callable[..., np.ndarray]
    ) -> None:
        """Check the ONNX graph at ``path`` against ``reference`` and record the file."""
        self.parity[path.name] = check_parity(path.name, role, cases, reference, ort_runner(path))
        self.add(path, role, "onnx")

    def graph(
        self,
        role: str,
        module: torch.nn.Module,
        example: Sequence[torch.Tensor],
        names: tuple[Sequence[str], Sequence[str]],
        dynamic: Sequence[dict[int, Any]],
        cases: Cases,
        *,
        script: bool = False,
        graph_module: torch.nn.Module | None = None,
        traced_axes: dict[str, dict[int, str]] | None = None,
    ) -> Callable[..., np.ndarray]:
        """Export ``graph_module`` (default ``module``) as ``{role}.onnx`` (and ``.pt`` when
        TorchScript is wanted) and check it against ``module`` on ``cases``. ``names`` are the
        graph's input and output names, ``dynamic`` its dynamic axes per input.

        ``traced_axes``: export with the TorchScript-based exporter and these dynamic axes
        (see :func:`~distill_serve.export.graphs.export_onnx_traced`) instead of ``dynamic``.

        Returns:
            The torch reference it checked against, with its outputs on ``cases`` kept.
        """
        reference = memoised(torch_runner(module))
        module = module if graph_module is None else graph_module
        inputs, outputs = names
        self.progress.step(f"export {role}.onnx")
        t0 = time.perf_counter()
        target = self.out / f"{role}.onnx"
        if traced_axes is None:
            path = export_onnx(module, example, inputs, outputs, dynamic, target)
        else:
            path = export_onnx_traced(
                module, example, inputs, outputs, traced_axes, target, fold=True
            )
        self.timed(path.name, t0)
        self.progress.step(f"parity {role}.onnx")
        self.check(path, role, cases, reference)
        self.progress.done()
        if self.want_torchscript:
            self.progress.step(f"export {role}.pt")
            t0 = time.perf_counter()
            ts_path = export_torchscript(module, example, self.out / f"{role}.pt", script=script)
            self.timed(ts_path.name, t0)
            graph = torch.jit.load(str(ts_path))
            self.parity[ts_path.name] = check_parity(
                ts_path.name, role, cases, reference, torch_runner(graph)
            )
            self.add(ts_path, role, "torchscript")
            self.progress.done()
        return reference
