"""The device path's state pool (server/engine/state_pool.py), on the CPU provider standing in
for CUDA with the same classes and bindings: its graphs move exactly the rows asked for, rows
go back when their streams end, a stream's state crosses to the device once (not with every
step), and streams past the pool's rows run through scratch rows with the same bits."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from distill_serve.bundle import STREAM_OPEN_END, load_bundle
from distill_serve.server.engine.config import EngineConfig
from distill_serve.server.engine.engine import Engine
from distill_serve.server.engine.state_pool import PooledState, StatePool, pool_rows
from distill_serve.server.pipeline.model import ModelSpec
from distill_serve.server.pipeline.request import ChunkMode
from tests.conftest import generate, params

CPU = ["CPUExecutionProvider"]


def make_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=CPU)


def test_the_pool_graphs_move_only_the_rows_asked_for() -> None:
    pool = StatePool(rows=6, scratch=2, state_size=5, device="cpu", make_session=make_session)
    everything = np.arange(8 * 5, dtype=np.float32).reshape(8, 5)
    pool.write(np.arange(8), everything[:8])  # scratch rows too: a write is by row
    np.testing.assert_array_equal(pool.read(np.array([7, 0])), everything[[7, 0]])
    pool.write(np.array([4, 1]), -np.ones((2, 5), np.float32))
    expected = everything.copy()
    expected[[4, 1]] = -1
    for rows in ([0, 1], [2, 3], [4, 5], [6, 7]):
        np.testing.assert_array_equal(pool.read(np.array(rows)), expected[rows])
    # device to device: gather into a bound buffer, scatter one back elsewhere
    buffer = ort.OrtValue.ortvalue_from_shape_and_type((2, 5), np.float32, "cpu", 0)
    pool.gather(np.array([3, 4]), buffer)
    np.testing.assert_array_equal(buffer.numpy(), expected[[3, 4]])
    pool.scatter(np.array([5, 0]), buffer)
    expected[[5, 0]] = expected[[3, 4]]
    np.testing.assert_array_equal(pool.read(np.array([0, 5])), expected[[0, 5]])
    with pytest.raises(ValueError, match="at most 2 rows"):
        pool.read(np.arange(3))


def test_rows_go_back_when_their_handles_are_dropped_and_misses_are_counted() -> None:
    pool = StatePool(rows=2, scratch=1, state_size=3, device="cpu", make_session=make_session)
    a, b = pool.claim(), pool.claim()
    assert isinstance(a, PooledState) and isinstance(b, PooledState) and a.row != b.row
    assert pool.claim() is None
    stats = pool.stats()
    assert (stats.rows, stats.in_use, stats.peak, stats.overflow_steps) == (2, 2, 2, 1)
    row = a.row
    del a
    gc.collect()
    assert pool.stats().in_use == 1
    c = pool.claim()
    assert c is not None and c.row == row and pool.owns(c) and not pool.owns(np.zeros(3))
    assert pool_rows(state_size=2**18, budget_mb=64, scratch=4) == 64 - 8
    assert pool_rows(state_size=2**18, budget_mb=4, scratch=4) == 0  # too small: no pool


@pytest.fixture(scope="module")
def small_pool(stand_in_bundle: Path) -> Iterator[Engine]:
    """The device path with room for 3 streams' states, batches of up to 2."""
    stream = ModelSpec.from_bundle(load_bundle(stand_in_bundle)).stream
    state_size = stream.state_size if stream is not None else 0
    mb = -(-(3 + 2 * 2) * 4 * state_size // 2**20)  # 3 rows + scratch and read buffer of 2
    config = EngineConfig(
        use_cuda=False, fault_injection=True, live_capacity=0, step_batch=2, state_pool_mb=mb
    )
    engine = Engine.from_dir(stand_in_bundle, config)
    yield engine
    engine.close()


def test_streams_past_the_pools_rows_run_through_scratch_rows_bit_for_bit(
    small_pool: Engine,
) -> None:
    engine = small_pool
    spec = engine.model.stream
    primary = engine.primary
    pool = engine.primary_path.pool
    assert spec is not None and primary is not None and primary.steps is not None
    assert pool is not None and pool.rows >= 3 and pool.scratch == 2
    rng = np.random.default_rng(3)
    streams = pool.rows + 2
    device = [
        rng.standard_normal(spec.state_size).astype(np.float32) * 0.01 for _ in range(streams)
    ]
    cpu = [s.copy() for s in device]
    end = np.full((2, 1), STREAM_OPEN_END, np.int64)
    for step in range(3):
        for lo in range(0, streams, 2):  # batches of two, the last maybe of one
            rows = list(range(lo, min(lo + 2, streams)))
            mel = (rng.standard_normal((len(rows), engine.model.n_mels_voc, 8)) - 4).astype(
                np.float32
            )
            position = np.full((len(rows), 1), 8 * step, np.int64)
            args = (mel, position, end[: len(rows)])
            audio, states = primary.steps.run(*args, [device[i] for i in rows])
            cpu_audio, cpu_states = engine._cpu_steps(*args, [cpu[i] for i in rows])
            np.testing.assert_array_equal(audio, cpu_audio)
            for i, new, expected in zip(rows, states, cpu_states, strict=True):
                device[i], cpu[i] = new, expected
    held = [s for s in device if isinstance(s, PooledState)]
    assert len(held) == pool.rows and sum(isinstance(s, np.ndarray) for s in device) == 2
    for got, expected in zip(engine.primary_path.host_states(device), cpu, strict=True):
        np.testing.assert_array_equal(got, expected)
    stats = pool.stats()
    assert stats.in_use == pool.rows and stats.overflow_steps >= 2 * 3
    del device, held
    gc.collect()
    assert pool.stats().in_use == 0


def test_a_clip_sends_each_streams_state_to_the_device_once(stand_in_bundle: Path) -> None:
    config = EngineConfig(use_cuda=False, fault_injection=True, live_capacity=0)
    engine = Engine.from_dir(stand_in_bundle, config)
    try:
        pool = engine.primary_path.pool
        assert pool is not None and engine.scheduler is not None
        uploads: list[int] = []
        reads: list[int] = []
        write, read = pool.write, pool.read
        pool.write = lambda rows, states: (uploads.extend(rows.tolist()), write(rows, states))[1]  # type: ignore[method-assign]
        pool.read = lambda rows: (reads.extend(rows.tolist()), read(rows))[1]  # type: ignore[method-assign]
        p = params(engine, ChunkMode.CROSSFADE, duration_s=2.5, sample_rate=48000, seed=3)
        generate(engine, p)
        steps = engine.scheduler.stats().steps
        assert uploads and len(uploads) == len(set(uploads))  # one upload per stream
        assert steps >= 4 * len(uploads) and not reads  # and none per step, either way
        deadline = time.monotonic() + 5  # the clip's streams are gone: their rows are back
        while pool.stats().in_use and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        assert pool.stats().in_use == 0
    finally:
        engine.close()


def test_a_device_without_room_for_the_pool_gets_a_smaller_one(
    stand_in_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from distill_serve.server.engine import primary

    asked: list[int] = []

    def scarce(rows: int, *args: object) -> StatePool:
        asked.append(rows)
        if len(asked) == 1:
            raise RuntimeException("CUDA failure 2: out of memory; BFCArena (test)")
        return StatePool(rows, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(primary, "StatePool", scarce)
    config = EngineConfig(use_cuda=False, fault_injection=True, live_capacity=0, state_pool_mb=64)
    engine = Engine.from_dir(stand_in_bundle, config)
    try:
        pool = engine.primary_path.pool
        assert pool is not None and engine.has_primary  # served on the device all the same
        scratch = pool.scratch
        assert len(asked) == 2 and asked[1] == pool.rows < asked[0]
        assert pool.rows == pool_rows(pool.state_size, 32, scratch)
    finally:
        engine.close()
    assert engine.primary_path.pool is None  # a closed engine lets its device memory go


def test_without_a_pool_the_states_travel_with_the_batch_and_give_the_same_bits(
    stand_in_bundle: Path,
) -> None:
    config = EngineConfig(use_cuda=False, fault_injection=True, live_capacity=0, state_pool_mb=0)
    engine = Engine.from_dir(stand_in_bundle, config)
    try:
        spec, primary = engine.model.stream, engine.primary
        assert spec is not None and primary is not None and primary.steps is not None
        assert engine.primary_path.pool is None and engine.state_pool_stats() is None
        rng = np.random.default_rng(11)
        for count, frames in ((4, 8), (3, 4)):  # a batched step size, and short rows
            mel = (rng.standard_normal((count, engine.model.n_mels_voc, frames)) - 4).astype(
                np.float32
            )
            position = np.full((count, 1), 16, np.int64)
            end = np.full((count, 1), STREAM_OPEN_END, np.int64)
            states = [
                rng.standard_normal(spec.state_size).astype(np.float32) * 0.01 for _ in range(count)
            ]
            audio, new = primary.steps.run(mel, position, end, states)
            assert all(isinstance(s, np.ndarray) for s in new)
            for i in range(count):
                at = slice(i, i + 1)
                cpu_audio, cpu_new = engine._cpu_steps(mel[at], position[at], end[at], [states[i]])
                np.testing.assert_array_equal(audio[i], cpu_audio[0])
                np.testing.assert_array_equal(new[i], cpu_new[0])
    finally:
        engine.close()
