"""The decoder's rows of many generations coalesced into shared runs on the device thread
(server/engine/row_batches.py), with the CPU provider standing in for CUDA."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from distill_serve.server.engine.config import EngineConfig
from distill_serve.server.engine.cuda import DeviceWorker
from distill_serve.server.engine.engine import Engine
from distill_serve.server.engine.row_batches import RowBatcher


@pytest.fixture
def worker() -> Iterator[DeviceWorker]:
    w = DeviceWorker("test-device")
    yield w
    w.close()


def held(worker: DeviceWorker) -> threading.Event:
    """Keep the device thread busy until the returned event is set."""
    release = threading.Event()
    worker.submit(lambda: release.wait(10))
    return release


def concurrently(
    batcher: RowBatcher, calls: list[Callable[[], np.ndarray]], release: threading.Event
) -> list[np.ndarray]:
    """``calls`` from a thread each; ``release`` (the busy device thread) once all of them
    are queued."""
    results: dict[int, np.ndarray] = {}
    queued = batcher.calls

    def call(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while batcher.calls < queued + len(calls) and time.monotonic() < deadline:
        time.sleep(0.005)
    release.set()
    for t in threads:
        t.join(30)
    return [results[i] for i in range(len(calls))]


def recording(shapes: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        shapes.append(len(x))
        return x * 2.0 + 1.0

    return run


def test_rows_queued_while_the_device_is_busy_share_one_padded_run(worker: DeviceWorker) -> None:
    shapes: list[int] = []
    batcher = RowBatcher(recording(shapes), worker, sizes=(1, 2, 4, 8))
    rng = np.random.default_rng(0)
    calls = [rng.standard_normal((n, 3)).astype(np.float32) for n in (1, 2, 1, 3)]
    release = held(worker)
    results = concurrently(batcher, [lambda x=x: batcher.run(x) for x in calls], release)
    assert shapes == [8] and batcher.runs == 1 and batcher.calls == 4  # 7 rows, padded to 8
    for x, y in zip(calls, results, strict=True):
        np.testing.assert_array_equal(y, x * 2.0 + 1.0)
    assert batcher.run(calls[0]).shape == (1, 3) and shapes[-1] == 1  # alone: its own rows


def test_more_rows_than_the_largest_size_run_in_parts(worker: DeviceWorker) -> None:
    shapes: list[int] = []
    batcher = RowBatcher(recording(shapes), worker, sizes=(1, 2, 4))
    x = np.arange(21, dtype=np.float32).reshape(7, 3)
    np.testing.assert_array_equal(batcher.run(x), x * 2.0 + 1.0)
    assert shapes == [4, 4]


def test_a_failed_run_fails_its_callers_and_the_next_run_works(worker: DeviceWorker) -> None:
    fail = [True]

    def run(x: np.ndarray) -> np.ndarray:
        if fail[0]:
            raise RuntimeError("CUDA failure 2: out of memory (test)")
        return x

    batcher = RowBatcher(run, worker)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.run(np.ones((2, 3), np.float32))
    fail[0] = False
    np.testing.assert_array_equal(batcher.run(np.ones((2, 3))), np.ones((2, 3)))
    worker.close()
    with pytest.raises(RuntimeError, match="closed"):  # and no caller is left waiting
        batcher.run(np.ones((1, 3)))


def test_the_engines_device_decoder_coalesces_and_equals_the_cpu(stand_in_bundle: Path) -> None:
    config = EngineConfig(use_cuda=False, fault_injection=True, live_capacity=0)
    engine = Engine.from_dir(stand_in_bundle, config)
    try:
        primary = engine.primary
        assert primary is not None
        rng = np.random.default_rng(5)
        dim = engine.model.latent_dim
        calls = [rng.standard_normal((n, dim)).astype(np.float32) for n in (1, 2, 1)]
        runs = primary.decoder.runs
        served: list[int] = []
        engine.on_decoder_run = served.append  # what the server's metrics observe
        release = held(primary._worker)
        decodes = [lambda z=z: engine.runner().decode(z) for z in calls]  # a generation each
        results = concurrently(primary.decoder, decodes, release)
        assert primary.decoder.runs == runs + 1  # three generations' rows, one run
        assert served == [3]
        for i, z in enumerate(calls):
            np.testing.assert_array_equal(results[i], engine.graph("decoder").run(z))
    finally:
        engine.close()
