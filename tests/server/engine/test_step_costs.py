"""The step graph's cost measured at start (server/engine/step_costs.py), and the largest
step batch: on CPU single steps unless configured, on the device up to 32."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distill_serve.bundle import load_bundle
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.engine.step_costs import measure_step_costs


def _runner(per_row_s: float):  # type: ignore[no-untyped-def]
    def run(mel: np.ndarray, position: np.ndarray, end: np.ndarray, state: list[Any]) -> Any:
        time.sleep(per_row_s * mel.shape[0])
        return np.zeros((mel.shape[0], 1, 8)), state

    return run


def test_measured_costs_are_per_frame_alone_and_together(engine: Engine) -> None:
    costs = measure_step_costs(engine.model, [_runner(0.008)] * 2)
    # 8 ms per 8-frame step: at least 1 ms per frame, whether one runner runs or two
    assert costs.alone >= 0.001 and costs.together >= 0.001


def test_the_engine_runs_single_steps_on_cpu_unless_configured(stand_in_bundle: Path) -> None:
    bundle = load_bundle(stand_in_bundle)
    default = Engine(bundle, EngineConfig(use_cuda=False, live_capacity=0))
    assert default.scheduler is not None and default.scheduler.batch_sizes == (1,)
    assert default.capacity is not None and default.capacity.fixed == 0  # nothing measured
    fixed = Engine(bundle, EngineConfig(use_cuda=False, live_capacity=0, step_batch=2))
    assert fixed.scheduler is not None and fixed.scheduler.batch_sizes == (1, 2)
    for e in (default, fixed):
        e.close()
    with pytest.raises(ValueError, match="step_batch"):
        EngineConfig(step_batch=0)


def test_serve_takes_step_batch_from_its_command_line() -> None:
    from distill_serve.cli import build_parser
    from distill_serve.server.api.cli import server_config

    parse = build_parser().parse_args
    assert server_config(parse(["serve", "--step-batch", "4"])).engine.step_batch == 4
    assert server_config(parse(["serve"])).engine.step_batch is None
