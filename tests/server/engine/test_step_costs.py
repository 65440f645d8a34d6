"""The step graph's cost measured at start (server/engine/step_costs.py) decides whether the
CPU step scheduler batches: only where a batched frame is clearly cheaper than a single
step's. Checked with stand-in runners whose cost is all per call (batching pays) or all per
row (it does not), on the stand-in bundle's model, and on the engine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distill_serve.bundle import load_bundle
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.engine.scheduler import BATCH_SIZES
from distill_serve.server.engine.step_costs import BATCH_GAIN, StepCosts, measure_step_costs


def _runner(per_call_s: float, per_row_s: float):  # type: ignore[no-untyped-def]
    def run(mel: np.ndarray, position: np.ndarray, end: np.ndarray, state: np.ndarray) -> Any:
        time.sleep(per_call_s + per_row_s * mel.shape[0])
        return np.zeros((mel.shape[0], 1, 8)), state

    return run


def test_the_cpu_batches_only_where_a_batched_frame_is_clearly_cheaper() -> None:
    assert StepCosts(1.0, 2.0).cpu_batch() == 1  # not measured: single steps
    assert StepCosts(1.0, 2.0, 2.0 * BATCH_GAIN).cpu_batch() == BATCH_SIZES[-1]
    assert StepCosts(1.0, 2.0, 2.0 * BATCH_GAIN * 1.01).cpu_batch() == 1
    assert StepCosts(1.0, 2.0, 1.5).batch_ratio == pytest.approx(0.75)


def test_measured_costs_choose_the_batch(engine: Engine) -> None:
    model = engine.model
    per_call = measure_step_costs(model, [_runner(0.004, 0.0)] * 2, batched=True)
    assert per_call.cpu_batch() == BATCH_SIZES[-1], per_call
    # (a row's cost well above a busy machine's late wake-ups from sleep, which count per call)
    per_row = measure_step_costs(model, [_runner(0.0, 0.05)] * 2, batched=True)
    assert per_row.cpu_batch() == 1, per_row
    assert measure_step_costs(model, [_runner(0.0, 0.001)] * 2).batched is None


def test_the_engine_takes_the_measured_or_the_configured_batch(stand_in_bundle: Path) -> None:
    bundle = load_bundle(stand_in_bundle)
    measured = Engine(bundle, EngineConfig(use_cuda=False, live_capacity=0))
    costs = measured.step_costs
    assert costs is not None and costs.batched is not None and measured.scheduler is not None
    assert measured.scheduler.batch_sizes[-1] == costs.cpu_batch()
    fixed = Engine(bundle, EngineConfig(use_cuda=False, live_capacity=0, step_batch=2))
    assert fixed.step_costs is None  # nothing left to measure
    assert fixed.scheduler is not None and fixed.scheduler.batch_sizes == (1, 2)
    with pytest.raises(ValueError, match="step_batch"):
        EngineConfig(step_batch=0)


def test_serve_takes_step_batch_from_its_command_line() -> None:
    from distill_serve.cli import build_parser
    from distill_serve.server.api.cli import server_config

    parse = build_parser().parse_args
    assert server_config(parse(["serve", "--step-batch", "4"])).engine.step_batch == 4
    assert server_config(parse(["serve"])).engine.step_batch is None
