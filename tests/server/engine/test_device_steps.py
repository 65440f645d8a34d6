"""The streaming vocoder's steps through the step scheduler on the primary path (CUDA on a
GPU; here the CPU provider stands in for it, with the same classes and bindings): batched
steps equal unbatched ones bit for bit, a batch that fails for device memory is re-run on the
CPU with nothing lost, and live and fixed-length semantics hold on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distill_serve.bundle import STREAM_OPEN_END
from distill_serve.client import Client
from distill_serve.export.parity import snr_db
from distill_serve.server.api.config import ServerConfig
from distill_serve.server.engine.config import EngineConfig
from distill_serve.server.engine.cuda import DeviceWorker
from distill_serve.server.engine.device_steps import (
    StepSessions,
    batched_frames,
    step_shapes,
    warm_shapes,
)
from distill_serve.server.engine.engine import Engine
from distill_serve.server.engine.scheduler import BATCH_SIZES
from distill_serve.server.pipeline.generate import audio_blocks
from distill_serve.server.pipeline.live import LiveSession
from distill_serve.server.pipeline.request import ChunkMode
from distill_serve.server.pipeline.runner import LIVE, Step
from tests.conftest import ServerThread, generate, params


@pytest.fixture(scope="module")
def device(stand_in_bundle: Path) -> Iterator[Engine]:
    """The stand-in on the device path: the primary path on the CPU provider."""
    config = EngineConfig(use_cuda=False, fault_injection=True, live_capacity=0)
    engine = Engine.from_dir(stand_in_bundle, config)
    yield engine
    engine.close()


def steps(engine: Engine, count: int, frames: int = 8, seed: int = 0) -> list[Step]:
    spec = engine.model.stream
    assert spec is not None
    rng = np.random.default_rng(seed)
    return [
        Step(
            mel=(rng.standard_normal((engine.model.n_mels_voc, frames)) - 4).astype(np.float32),
            position=int(rng.integers(0, 400)),
            state=rng.standard_normal(spec.state_size).astype(np.float32) * 0.01,
            deadline=time.monotonic() + 10,
            end=STREAM_OPEN_END,
            rank=LIVE,
        )
        for _ in range(count)
    ]


def stacked(batch: list[Step]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[object]]:
    """A batch runner's arguments, as the step scheduler gives them."""
    return (
        np.stack([s.mel for s in batch]),
        np.array([[s.position] for s in batch], np.int64),
        np.array([[s.end] for s in batch], np.int64),
        [s.state for s in batch],
    )


def host(engine: Engine, states: Sequence[object]) -> list[np.ndarray]:
    """Step states as host arrays (the pool's rows read back)."""
    read = engine.primary_path.host_states(states)
    assert all(isinstance(s, np.ndarray) for s in read)
    return [np.asarray(s) for s in read]


def test_the_engine_streams_through_the_device(device: Engine) -> None:
    assert device.vocoder_path == "stream" and device.has_primary
    primary = device.primary
    assert primary is not None and primary.steps is not None
    runner = device.runner()
    assert runner.on_primary and runner.stream_spec is not None
    audio, _ = runner.stream_steps(steps(device, 1))[0]
    assert audio.shape == (8 * device.model.geometry.vocoder_hop,)
    assert primary.steps.shapes  # the batch ran on a bound session


@pytest.mark.parametrize("frames", [8, 16])
def test_batched_device_steps_equal_unbatched_bit_for_bit(device: Engine, frames: int) -> None:
    primary = device.primary
    assert primary is not None and primary.steps is not None
    batch = steps(device, 4, frames, seed=frames)
    audio, states = primary.steps.run(*stacked(batch))
    together = host(device, states)
    assert (4, frames) in primary.steps.shapes
    for i, step in enumerate(batch):
        alone_audio, alone = primary.steps.run(*stacked([step]))
        np.testing.assert_array_equal(audio[i], alone_audio[0])
        np.testing.assert_array_equal(together[i], host(device, alone)[0])
        # and the CPU step session's result, which the OOM fallback gives
        cpu = device._cpu_steps(*stacked([step]))
        np.testing.assert_array_equal(alone_audio, cpu[0])
        np.testing.assert_array_equal(host(device, alone)[0], cpu[1][0])


def test_short_steps_run_row_by_row_and_equal_the_cpu_bit_for_bit(device: Engine) -> None:
    primary = device.primary
    assert primary is not None and primary.steps is not None
    batch = steps(device, 3, frames=4, seed=4)  # a clip tail's short step, in three streams
    audio, states = primary.steps.run(*stacked(batch))
    state = host(device, states)
    assert (1, 4) in primary.steps.shapes and (3, 4) not in primary.steps.shapes
    for i, step in enumerate(batch):
        cpu_audio, cpu_state = device._cpu_steps(*stacked([step]))
        np.testing.assert_array_equal(audio[i], cpu_audio[0])
        np.testing.assert_array_equal(state[i], cpu_state[0])


def test_the_device_paths_step_shapes_stay_within_a_fixed_set(device: Engine) -> None:
    """Clips of any length (odd first steps and tails) and live sessions make no step
    session outside :func:`step_shapes`: their count cannot grow with what clients ask."""
    spec = device.model.stream
    assert spec is not None
    for seconds in (0.37, 0.81, 1.13, 1.61):
        p = params(device, ChunkMode.CROSSFADE, duration_s=seconds, sample_rate=48000, seed=7)
        generate(device, p)
    live = LiveSession(device.runner(), device.model, params(device, ChunkMode.SLIDER), 0.3)
    for _ in range(4):
        live.next_block()
    primary = device.primary
    assert primary is not None and primary.steps is not None
    made = set(primary.steps.shapes)
    assert made <= set(step_shapes(spec.step_frames, BATCH_SIZES[-1])), made
    batched = batched_frames(spec.step_frames)
    assert {f for _, f in made} - batched  # short steps ran, one row at a time
    assert len(step_shapes(spec.step_frames, BATCH_SIZES[-1])) == 21
    warm = warm_shapes(spec.step_frames, BATCH_SIZES[-1])  # what a CUDA server makes at start
    assert set(warm) <= set(step_shapes(spec.step_frames, BATCH_SIZES[-1])) and len(warm) == 16
    assert {(1, 1), (1, 2), (1, 4), (1, 32), (32, 8), (32, 16)} <= set(warm)


def test_the_steps_run_on_the_device_thread(stand_in_bundle: Path) -> None:
    engine = Engine.from_dir(
        stand_in_bundle, EngineConfig(use_cuda=False, fault_injection=True, live_capacity=0)
    )
    try:
        seen: set[str] = set()
        primary = engine.primary
        assert primary is not None and primary.steps is not None
        bound = primary.steps._session(1, 8)
        inner = bound.run_pooled

        def spy(*args: Any) -> np.ndarray:
            seen.add(threading.current_thread().name)
            return inner(*args)

        bound.run_pooled = spy  # type: ignore[method-assign]
        engine.runner().stream_steps(steps(engine, 1))
        assert seen == {"cuda-0"}
    finally:
        engine.close()


def test_an_oom_mid_batch_is_rerun_on_cpu_and_loses_nothing(device: Engine) -> None:
    batch = steps(device, 6, seed=7)
    expected = [device._cpu_steps(*stacked([s])) for s in batch]
    before = device.step_fallbacks
    pool = device.primary_path.pool
    assert pool is not None
    device.inject_oom(1)
    results = device.runner().stream_steps(batch)
    assert device.step_fallbacks == before + 1
    for (audio, state), (cpu_audio, cpu_state) in zip(results, expected, strict=True):
        np.testing.assert_array_equal(audio, cpu_audio.reshape(-1))
        np.testing.assert_array_equal(host(device, [state])[0], cpu_state[0])
    deadline = time.monotonic() + 10  # the primary path is rebuilt and serves again
    while device.primary is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert device.primary is not None and device.primary.steps is not None
    assert device.primary_path.pool is pool  # the streams' states outlive the rebuild


def test_live_and_fixed_length_semantics_hold_on_the_device(engine: Engine, device: Engine) -> None:
    p = params(engine, ChunkMode.SLIDER, duration_s=3.0, sample_rate=48000)
    cpu_clip = generate(engine, p)
    device_clip = generate(device, p)
    # the stand-in: the same bits as CPU serving the same steps (the device splits a short
    # step into powers of two, which changes the audio only in the last bits)
    runner = engine.runner()
    runner.fixed_step_shapes = True
    split = np.concatenate(list(audio_blocks(runner, engine.model, p)), axis=1)
    np.testing.assert_array_equal(device_clip, split)
    assert snr_db(cpu_clip, device_clip) >= 100.0
    # a live session with no controls plays the fixed-length audio (up to the clip's tail,
    # which ends its mel; tests/server/pipeline/test_live.py)
    live = LiveSession(device.runner(), device.model, p, 0.3)
    audio = np.concatenate([live.next_block().audio for _ in range(12)], axis=1)
    n = min(audio.shape[1], cpu_clip.shape[1] - int(0.7 * 48000))
    assert n > 48000 and snr_db(cpu_clip[:, :n], audio[:, :n]) >= 60.0


def test_a_server_on_the_device_path_survives_ooms_under_load(stand_in_bundle: Path) -> None:
    # Single steps: each (batch, frames) shape is a session of its own, ~0.3-0.6 GB on the
    # stand-in here, and each injected OOM rebuilds them all; with batches of 1, 2 and 4 the
    # worker grew to 16 GB beside the Ray tests in a fresh-clone run (their replicas then
    # died for memory). Batched device steps are checked above.
    config = EngineConfig(use_cuda=False, fault_injection=True, live_capacity=0, step_batch=1)
    engine = Engine.from_dir(stand_in_bundle, config)
    server = ServerThread(ServerConfig(port=0), engine)
    try:
        with Client(server.target, timeout=120) as c:
            reference = {i: c.generate("crossfade", 1.5, seed=i).audio for i in range(4)}
            engine.inject_oom(3)
            results: dict[int, np.ndarray] = {}

            def work(i: int) -> None:
                with Client(server.target, timeout=120) as client:
                    results[i] = client.generate_streamed("crossfade", 1.5, seed=i).audio

            threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert sorted(results) == [0, 1, 2, 3]
        for i, audio in results.items():
            np.testing.assert_array_equal(audio, reference[i])
        fallbacks = sum(
            server.metric("distill_cuda_fallbacks_total", {"graph": g})
            for g in ("decoder", "bridge", "vocoder_stream")
        )
        assert fallbacks == 3
        # the streams' states were rows of the device's pool, and went back with the streams
        pool = engine.state_pool_stats()
        assert pool is not None and server.metric("distill_state_pool_rows") == pool.rows > 0
        assert pool.peak >= 1 and server.metric("distill_state_pool_rows_in_use") <= pool.peak
        assert server.metric("distill_state_pool_overflow_steps_total") == 0
        # the generations' decoder rows ran on the device, counted by the run they shared
        assert server.metric("distill_decoder_run_generations_count") > 0
    finally:
        server.stop()
        engine.close()


def test_step_sessions_are_made_once_per_shape(stand_in_bundle: Path) -> None:
    import onnxruntime as ort

    made: list[Path] = []

    def make(path: Path) -> ort.InferenceSession:
        made.append(path)
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    worker = DeviceWorker("test-device")
    try:
        sessions = StepSessions(
            stand_in_bundle / "vocoder_stream.onnx", make, worker, "cpu", frozenset({8})
        )
        sessions.warm(((1, 8), (2, 8)))
        assert sessions.shapes == ((1, 8), (2, 8)) and len(made) == 2
        assert sessions._session(2, 8).shape == (2, 8)
        assert len(made) == 2  # reused, not made again
    finally:
        worker.close()
