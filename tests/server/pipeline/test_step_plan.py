"""A stream's step sizes (``step_plan``): whole steps and one short step; on the device path
the short step in powers of two, whatever a clip's length, so its step shapes form a small
fixed set (``tests/server/engine/test_device_steps.py`` checks that set on a served engine)."""

from __future__ import annotations

import pytest

from distill_serve.server.pipeline.vocoder_stream import step_plan


@pytest.mark.parametrize("step", [8, 12, 16, 32])
@pytest.mark.parametrize("fed", [0, 24, 40])
def test_a_feed_is_whole_steps_and_powers_of_two_below_a_step(fed: int, step: int) -> None:
    for target in range(fed, fed + 3 * step + 2):
        plan = step_plan(fed, target, step, split=True)
        assert sum(plan) == target - fed
        short = [n for n in plan if n != step]
        assert all(n < step and n & (n - 1) == 0 for n in short), plan
        assert len(short) == len(set(short))  # each power at most once: log2(step) short steps
        whole = [n for n in plan if n == step]
        # a first feed's short steps come first (its whole steps end at the target, where
        # later feeds start); a later feed's come last (a clip's tail)
        assert plan == (short + whole if fed == 0 else whole + short)


def test_the_split_keeps_the_longest_short_steps_first() -> None:
    assert step_plan(0, 70, 32, split=True) == [4, 2, 32, 32]
    assert step_plan(64, 92, 32, split=True) == [16, 8, 4]
    assert step_plan(0, 32, 32, split=True) == [32]
    assert step_plan(10, 10, 8, split=True) == []


def test_on_cpu_a_feed_has_one_short_step() -> None:
    # each step costs the graph's fixed per-run work: one short step, not five
    assert step_plan(0, 70, 32) == [6, 32, 32]
    assert step_plan(64, 95, 32) == [31]
    assert step_plan(0, 20, 32) == [20]
    assert step_plan(8, 40, 8) == [8, 8, 8, 8]
