"""The live capacity follows what serving measures: a start figure taken beside a busy
process (too low) recovers once sessions run, admission and GetModelInfo read the current
figure, and a configured figure never moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill_serve.client import Client
from distill_serve.server.engine.capacity import CAPACITY_SHARE, LiveCapacity, estimate
from distill_serve.server.engine.config import EngineConfig
from distill_serve.server.engine.engine import Engine
from tests.conftest import start_server

FRAMES_PER_S = 48000 / 512


def test_served_runs_replace_a_pessimistic_start_figure() -> None:
    cheap = CAPACITY_SHARE / (4.5 * FRAMES_PER_S)  # a cost at which 4 sessions hold
    capacity = LiveCapacity(FRAMES_PER_S, runners=2, seconds_per_frame=4 * cheap)
    assert capacity.sessions == 1  # measured beside a busy process
    # about 17 s of served audio at the real cost, every runner busy
    for _ in range(200):
        capacity.observe(frames=8, seconds=8 * cheap * 2, busy=2)
    assert capacity.sessions == estimate(cheap, FRAMES_PER_S) == 4
    assert capacity.observed_runs == 200


def test_a_run_alone_counts_with_the_penalty_of_running_beside_the_others() -> None:
    per_frame = CAPACITY_SHARE / (6.5 * FRAMES_PER_S)
    capacity = LiveCapacity(FRAMES_PER_S, 2, per_frame, alone_penalty=1.5)
    for _ in range(400):  # alone: each frame took per_frame * 2 / 1.5 on one runner
        capacity.observe(frames=8, seconds=8 * per_frame * 2 / 1.5, busy=1)
    assert capacity.seconds_per_frame == pytest.approx(per_frame, rel=1e-6)
    assert capacity.sessions == 6


def test_one_slow_run_moves_the_figure_a_little() -> None:
    per_frame = CAPACITY_SHARE / (8.5 * FRAMES_PER_S)
    capacity = LiveCapacity(FRAMES_PER_S, 2, per_frame)
    capacity.observe(frames=8, seconds=8 * per_frame * 2 * 10, busy=2)  # a 10x hiccup
    assert capacity.sessions >= 6


def test_a_fixed_figure_never_moves() -> None:
    capacity = LiveCapacity(FRAMES_PER_S, 2, 1.0, fixed=3)
    capacity.observe(frames=8, seconds=1e-6, busy=2)
    assert capacity.sessions == 3
    assert LiveCapacity(FRAMES_PER_S, 2, 1.0, fixed=0).sessions == 0  # no limit


# It compares the step cost measured at start with the one measured while serving: both must
# see the same machine, not one of them a busy neighbour test (tests/realtime.py).
@pytest.mark.realtime
def test_a_server_started_beside_a_busy_process_recovers_while_serving(
    stand_in_bundle: Path,
) -> None:
    engine = Engine.from_dir(stand_in_bundle, EngineConfig(use_cuda=False))
    assert engine.capacity is not None and engine.scheduler is not None
    measured = engine.live_capacity
    # as if measured beside a busy process: the step cost four times what it is
    true_cost = engine.capacity.seconds_per_frame
    engine.capacity._per_frame = 4 * true_cost
    pessimistic = engine.live_capacity
    assert pessimistic < measured or pessimistic == 1
    server = start_server(engine, max_concurrent=8)
    try:
        with Client(server.target, timeout=60) as c:
            assert c.info().live_capacity == pessimistic
            session = c.live("slider", seed=3, sliders={0: 2}, lookahead=0.3, sample_rate=48000)
            played = 0.0
            for block in session:
                played += block.audio.shape[1] / 48000
                if played >= 12.0:
                    session.stop()
            assert engine.capacity.observed_runs > 50
            recovered = c.info().live_capacity  # GetModelInfo reads the current figure
        assert recovered == engine.live_capacity > pessimistic, (pessimistic, recovered)
        assert engine.capacity.seconds_per_frame < 2.5 * true_cost
    finally:
        server.stop()
        engine.close()


def test_an_automatic_concurrency_limit_follows_the_live_capacity(stand_in_bundle: Path) -> None:
    engine = Engine.from_dir(stand_in_bundle, EngineConfig(use_cuda=False, live_capacity=2))
    server = start_server(engine, max_concurrent=0)  # automatic, as the CLI's default
    try:
        assert engine.capacity is not None
        with Client(server.target, timeout=30) as c:
            assert c.info().max_concurrent_generations == 4  # max(4, 2) at start
            engine.capacity.fixed = 9  # as a capacity that grew while serving
            assert c.info().max_concurrent_generations == 9
    finally:
        server.stop()
        engine.close()
