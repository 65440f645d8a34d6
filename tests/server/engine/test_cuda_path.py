"""The CUDA path's machinery on CPU: fixed-shape windows, the device thread, IO binding,
failed starts that leave the server on CPU and retry, and the reason CUDA is not running.

The primary path is built on the CPU provider here (``fault_injection``): the same sessions
per shape, IO binding and device thread a GPU server uses, with "cpu" buffers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from distill_serve.client import Client
from distill_serve.export.parity import snr_db
from distill_serve.server.api.server import ServerConfig
from distill_serve.server.engine.config import CPU
from distill_serve.server.engine.cuda import (
    CUDA,
    VOCODER_BUCKETS,
    BoundSession,
    DeviceWorker,
    cuda_unavailable_reason,
    vocoder_buckets,
)
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.pipeline.dsp import fit_window
from distill_serve.server.pipeline.generate import audio_blocks
from distill_serve.server.pipeline.live import LiveSession
from distill_serve.server.pipeline.request import ChunkMode, Spatial
from tests.conftest import ServerThread, generate, params


@pytest.mark.parametrize(
    ("lo", "hi", "first", "last", "want"),
    [
        (80, 120, 0, None, (72, 120)),  # 40 -> 48: more left context
        (80, 180, 0, None, (76, 180)),  # 100 -> 104
        (0, 36, 0, 1000, (0, 36)),  # a bucket already
        (0, 44, 0, 1000, (0, 48)),  # no room on the left: more right context
        (0, 44, 0, 44, (0, 44)),  # a 44-frame clip fits no bucket: unchanged
        (300, 340, 290, None, (292, 340)),  # 40 -> 48 stays above the first frame kept
        (300, 345, 299, 350, (300, 348)),  # 45 -> 48 on the right
        (300, 345, 299, 347, (300, 345)),  # neither side has room for 48: unchanged
    ],
)
def test_fit_window(lo: int, hi: int, first: int, last: int | None, want: tuple) -> None:  # type: ignore[type-arg]
    assert fit_window(lo, hi, first, last, VOCODER_BUCKETS) == want


def test_fit_window_always_covers_the_block() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        lo = int(rng.integers(0, 500))
        hi = lo + int(rng.integers(1, 300))
        first = int(rng.integers(0, lo + 1))
        last = None if rng.random() < 0.3 else hi + int(rng.integers(0, 300))
        a, b = fit_window(lo, hi, first, last, VOCODER_BUCKETS)
        assert a <= lo and b >= hi and a >= first and (last is None or b <= last)
        assert (b - a) in VOCODER_BUCKETS or (a, b) == (lo, hi)


def test_device_worker_runs_on_one_thread_and_passes_errors() -> None:
    worker = DeviceWorker(name="test-device")
    seen: set[str] = set()

    def job(i: int) -> int:
        seen.add(threading.current_thread().name)
        if i == 7:
            raise ValueError("seven")
        return i * i

    results: list[int] = []
    errors: list[str] = []

    def caller(i: int) -> None:
        try:
            results.append(worker.call(lambda: job(i)))
        except ValueError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    worker.close()
    assert seen == {"test-device"}
    assert sorted(results) == sorted(i * i for i in range(12) if i != 7) and errors == ["seven"]


def test_bound_session_matches_a_plain_run(stand_in_bundle: Path) -> None:
    session = ort.InferenceSession(str(stand_in_bundle / "vocoder.onnx"), providers=[CPU])
    bound = BoundSession(session, (1, 128, 48), "cpu")
    rng = np.random.default_rng(1)
    for _ in range(2):  # the bound buffers are reused
        x = rng.standard_normal((1, 128, 48)).astype(np.float32) - 4.0
        np.testing.assert_array_equal(bound.run(x), session.run(None, {"mel": x})[0])
    with pytest.raises(ValueError, match="does not fit"):
        bound.run(np.zeros((1, 128, 40), np.float32))


@pytest.fixture(scope="module")
def fixed_engine(stand_in_bundle: Path) -> Engine:
    # the block path on the device (a bundle without a streaming graph, --vocoder-path block)
    config = EngineConfig(
        use_cuda=False, fault_injection=True, fixed_shapes=True, vocoder_path="block"
    )
    return Engine.from_dir(stand_in_bundle, config)


@pytest.mark.parametrize("mode", list(ChunkMode))
def test_fixed_shape_path_gives_the_cpu_audio(  # type: ignore[no-untyped-def]
    engine: Engine, fixed_engine: Engine, mode: ChunkMode, report
) -> None:
    runner = fixed_engine.runner()
    # the stand-in's context: its receptive field (20) raised to its stream latency (22)
    assert fixed_engine.model.context_frames == 22
    assert runner.vocoder_buckets == vocoder_buckets(22) != VOCODER_BUCKETS
    worst = np.inf
    for duration, spatial in ((0.7, Spatial.MONO), (4.3, Spatial.DUAL_SEED)):
        p = params(engine, mode, duration_s=duration, spatial=spatial, sample_rate=48000)
        reference = generate(engine, p)
        runner = fixed_engine.runner()
        audio = np.concatenate(list(audio_blocks(runner, fixed_engine.model, p)), axis=1)
        assert runner.on_primary and audio.shape == reference.shape
        worst = min(worst, snr_db(reference, audio))
    report(f"fixed-shape primary path vs CPU path, {mode.value}: >= {worst:.1f} dB")
    assert worst >= 100.0


def test_fixed_shape_path_runs_live_sessions(engine: Engine, fixed_engine: Engine) -> None:
    p = params(engine, ChunkMode.SLIDER)
    cpu, fixed = (LiveSession(e.runner(), e.model, p, 0.3) for e in (engine, fixed_engine))
    a = np.concatenate([cpu.next_block().audio for _ in range(20)], axis=1)
    b = np.concatenate([fixed.next_block().audio for _ in range(20)], axis=1)
    assert snr_db(a, b) >= 100.0


def test_fixed_shapes_follow_the_bundle_context(demo_bundle: Path, report) -> None:  # type: ignore[no-untyped-def]
    """A HiFi-GAN bundle (context 15 frames, not BigVGAN's 20) gets its own buckets, and the
    fixed-shape path still gives the CPU path's audio."""
    cpu = Engine.from_dir(demo_bundle, EngineConfig(use_cuda=False))
    config = EngineConfig(
        use_cuda=False, fault_injection=True, fixed_shapes=True, vocoder_path="block"
    )
    fixed = Engine.from_dir(demo_bundle, config)
    assert cpu.model.context_frames == 15
    runner = fixed.runner()
    assert runner.vocoder_buckets == vocoder_buckets(15) != VOCODER_BUCKETS
    p = params(cpu, duration_s=3.1, sample_rate=48000)
    reference = generate(cpu, p)
    audio = np.concatenate(list(audio_blocks(runner, fixed.model, p)), axis=1)
    assert runner.on_primary and audio.shape == reference.shape
    report(f"fixed-shape path vs CPU path, HiFi-GAN bundle: {snr_db(reference, audio):.1f} dB")
    assert snr_db(reference, audio) >= 100.0


def test_failed_start_serves_on_cpu_and_retries(stand_in_bundle: Path) -> None:
    config = EngineConfig(
        use_cuda=False,
        fault_injection=True,
        inject_init_failures=2,
        primary_retry_s=0.2,
        live_capacity=0,  # no timing at start: the first retry must not have run yet
    )
    eng = Engine.from_dir(stand_in_bundle, config)
    try:
        assert not eng.has_primary and eng.primary_provider == CPU
        assert "could not be created" in eng.provider_note
        assert "Failed to allocate memory" in eng.provider_note
        s = ServerThread(ServerConfig(port=0), eng)
        try:
            assert s.metric("distill_cuda_init_failures_total") >= 1
            with Client(s.target, timeout=60) as c:
                info = c.info()
                assert info.execution_provider == CPU and "allocate" in info.provider_note
                clip = c.generate("crossfade", 0.5, seed=1)  # served, on CPU
                assert clip.stats is not None and clip.stats.execution_provider == CPU
                deadline = time.time() + 10  # retried after 0.2 s, 0.4 s: the third build works
                while not eng.has_primary and time.time() < deadline:
                    time.sleep(0.05)
                assert eng.has_primary and eng.provider_note == ""
                assert s.metric("distill_cuda_init_failures_total") == 2
                again = c.generate("crossfade", 0.5, seed=1)
                assert again.stats is not None
                assert again.stats.execution_provider == eng.primary_provider != CPU
                np.testing.assert_array_equal(again.audio, clip.audio)
                assert c.info().provider_note == ""
        finally:
            s.stop()
    finally:
        eng.close()


def test_the_reason_cuda_is_not_running_is_named(stand_in_bundle: Path) -> None:
    reason = cuda_unavailable_reason()
    eng = Engine.from_dir(stand_in_bundle, EngineConfig(use_cuda=True))
    try:
        if reason is None:  # a machine with a GPU and its libraries
            assert eng.primary_provider == CUDA and eng.provider_note == ""
            return
        assert any(word in reason for word in ("driver", "libraries", "CUDA provider"))
        assert eng.primary_provider == CPU and reason in eng.provider_note
        assert "distill-serve[cuda]" in reason or "libcuda" in reason or "CPU build" in reason
    finally:
        eng.close()


def test_bad_algo_search_is_refused() -> None:
    with pytest.raises(ValueError, match="HEURISTIC"):
        EngineConfig(cudnn_conv_algo_search="FAST")
    with pytest.raises(ValueError, match="fault_injection"):
        EngineConfig(inject_init_failures=1)


def test_a_request_on_the_old_primary_survives_a_rebuild(stand_in_bundle: Path) -> None:
    """A rebuild (after an OOM elsewhere) swaps the sessions while requests still hold the
    old ones: they keep running on the engine's one device thread (this once hung)."""
    eng = Engine.from_dir(stand_in_bundle, EngineConfig(use_cuda=False, fault_injection=True))
    try:
        runner = eng.runner()
        z = np.zeros((3, eng.model.latent_dim), np.float32)
        before = runner.decode(z)
        eng.rebuild_primary()
        assert eng.primary is not runner._primary  # the swap happened
        np.testing.assert_array_equal(runner.decode(z), before)
        np.testing.assert_array_equal(eng.runner().decode(z), before)
    finally:
        eng.close()
    worker = DeviceWorker()
    worker.close()
    with pytest.raises(RuntimeError, match="closed"):
        worker.call(lambda: 1)
