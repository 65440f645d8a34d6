"""The streaming vocoder (export/streaming.py) and its serving path
(server/pipeline/vocoder_stream.py, server/engine/scheduler.py): step by step it equals the
whole-clip vocoder; served, it equals the block path at every rate, unary equals stream, live
controls land on the same frames, and a generation's steps carry its rank (the scheduler
alone: tests/server/engine/test_scheduler.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from distill_serve.bundle import STREAM_OPEN_END, BundleError, load_bundle
from distill_serve.client import Client, DistillError
from distill_serve.export.hifigan import HiFiGANGenerator
from distill_serve.export.parity import snr_db
from distill_serve.export.streaming import PARITY_STEPS, StreamingVocoder, run_stream
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.pipeline.live import LiveControl, LiveSession
from distill_serve.server.pipeline.request import ChunkMode, Spatial
from distill_serve.server.pipeline.runner import FIRST_AUDIO, LIVE, REST
from tests.conftest import SMALL_HIFIGAN, generate, manifest, params, start_server

#: The streaming graph against the whole-clip vocoder, and the served stream path against
#: the block path: the issue asks 100 dB; float32 itself gives 100-107 dB on HiFi-GAN
#: universal (its whole-clip ONNX graph and torch agree to 99-111 dB), 124-155 dB on the
#: small models. The tests hold the small models to 100 dB and every model to the export's
#: 90 dB floor (a real mistake measures < 30 dB; export/parity.py).
MIN_STREAM_SNR_DB = 100.0
FLOAT32_FLOOR_DB = 90.0


def _torch_step(model: StreamingVocoder):  # type: ignore[no-untyped-def]
    def step(mel, position, end, state):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            audio, new = model(*(torch.from_numpy(x) for x in (mel, position, end, state)))
        return audio.numpy(), new.numpy()

    return step


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_hifigan_stream_equals_the_whole_clip_from_its_first_sample_to_its_last(
    resblock: str,
) -> None:
    """Told the clip's end and fed its latency past it, the stream pads both edges as the
    whole-clip graph does: every sample matches, the last ``delay_samples`` included."""
    config = dict(SMALL_HIFIGAN, resblock=resblock)
    if resblock == "2":
        config["resblock_dilation_sizes"] = [[1, 2], [2, 6], [3, 12]]
    torch.manual_seed(1)
    model = HiFiGANGenerator(config).eval()
    stream = StreamingVocoder(model, "hifigan", 256).eval()
    layout = stream.layout
    assert layout.head_frames == layout.tail_frames == 0
    assert layout.latency_frames == -(-layout.delay_samples // 256)
    mel = (np.random.default_rng(2).standard_normal((2, 80, 70)) * 2 - 4).astype(np.float32)
    with torch.no_grad():
        whole = model(torch.from_numpy(mel)).numpy()
    delay, tail = layout.delay_samples, slice(-layout.delay_samples, None)
    for frames in PARITY_STEPS:
        state = stream.initial_state(2).numpy()
        out = run_stream(_torch_step(stream), mel, state, frames, 256, layout.latency_frames)
        assert out.shape[2] == (70 + layout.latency_frames) * 256  # S * hop samples per step
        got = out[:, :, delay : delay + whole.shape[2]]
        assert snr_db(whole, got) >= MIN_STREAM_SNR_DB
        assert snr_db(whole[:, :, tail], got[:, :, tail]) >= MIN_STREAM_SNR_DB
    # Not told the end (an open-ended stream), the zeros fed past it are audio: the tail
    # differs. That is what the ``end`` input is for.
    state = stream.initial_state(2).numpy()

    def open_ended(mel, position, end, state):  # type: ignore[no-untyped-def]
        return _torch_step(stream)(mel, position, np.full_like(end, STREAM_OPEN_END), state)

    out = run_stream(open_ended, mel, state, 8, 256, layout.latency_frames)
    got = out[:, :, delay : delay + whole.shape[2]]
    assert snr_db(whole[:, :, tail], got[:, :, tail]) < 60


def test_bundles_carry_a_checked_streaming_graph(stand_in_bundle: Path, demo_bundle: Path) -> None:
    for bundle, family in ((stand_in_bundle, "bigvgan"), (demo_bundle, "hifigan")):
        m = manifest(bundle)
        stream = m["vocoder"]["stream"]
        parity = m["parity"]["vocoder_stream.onnx"]
        floor = MIN_STREAM_SNR_DB if family == "bigvgan" else FLOAT32_FLOOR_DB
        assert parity["passed"] and parity["min_snr_db"] >= floor
        assert stream["parity_vs_torch"]["passed"]
        assert stream["latency_frames"] * stream["hop"] >= stream["delay_samples"]
        assert stream["state_size"] > 0 and 8 in stream["step_frames"]
        assert {f["role"] for f in m["files"]} >= {"vocoder_stream"}
        if family == "hifigan":  # zero padding: matched from the first sample to the last
            assert stream["head_frames"] == stream["tail_frames"] == 0
            assert stream["head_edge"] is None and stream["tail_edge"] is None
        else:  # BigVGAN's replicate-padded edges are served from the whole-clip graph
            assert stream["head_frames"] > 0 and stream["tail_frames"] > 0
            for edge in (stream["head_edge"], stream["tail_edge"]):
                assert edge["served_from"] == "the whole-clip vocoder graph"


@pytest.fixture(scope="module")
def hifigan_engines(demo_bundle: Path) -> tuple[Engine, Engine]:
    stream = Engine.from_dir(demo_bundle, EngineConfig(use_cuda=False, vocoder_path="stream"))
    block = Engine.from_dir(demo_bundle, EngineConfig(use_cuda=False, vocoder_path="block"))
    assert (stream.vocoder_path, block.vocoder_path) == ("stream", "block")
    return stream, block


def test_stream_path_equals_the_block_path_at_every_rate(  # type: ignore[no-untyped-def]
    hifigan_engines: tuple[Engine, Engine], report
) -> None:
    stream, block = hifigan_engines
    worst = np.inf
    # Every rate on a mono clip (the rate only changes what follows the vocoder), and the
    # two-channel slider case at one rate.
    cases = [(ChunkMode.CROSSFADE, Spatial.MONO, r) for r in stream.model.sample_rates]
    cases.append((ChunkMode.SLIDER, Spatial.DUAL_SEED, 48000))
    for mode, spatial, rate in cases:
        p = params(block, mode, sample_rate=rate, spatial=spatial, duration_s=1.3)
        a, b = generate(block, p), generate(stream, p)
        assert a.shape == b.shape == (p.channels, p.total_samples)
        worst = min(worst, snr_db(a, b))
    report(f"stream vs block path, HiFi-GAN universal bundle, every rate: worst {worst:.1f} dB")
    assert worst >= FLOAT32_FLOOR_DB


def _observed(runner):  # type: ignore[no-untyped-def]
    """``runner`` with its whole-clip vocoder runs counted (``runner.whole_clip_runs``) and
    the streaming steps it runs kept (``runner.steps_seen``)."""
    vocode, stream_steps = runner.vocode, runner.stream_steps
    runner.whole_clip_runs, runner.steps_seen = 0, []

    def counted(mel):  # type: ignore[no-untyped-def]
        runner.whole_clip_runs += 1
        return vocode(mel)

    def seen(steps):  # type: ignore[no-untyped-def]
        runner.steps_seen.extend(steps)
        return stream_steps(steps)

    runner.vocode, runner.stream_steps = counted, seen
    return runner


def test_a_hifigan_clip_streams_to_its_last_sample_without_the_whole_clip_graph(
    hifigan_engines: tuple[Engine, Engine], demo_bundle: Path, tmp_path: Path
) -> None:
    """On HiFi-GAN the stream delivers a fixed-length clip's tail itself (fed past the end,
    which the graph pads as the whole-clip graph does): no whole-clip run at all, the same
    audio. A bundle exported before (its graph without ``end``, no ``tail_frames``) still
    serves on the stream path and takes its tail from the whole-clip graph, with the same
    audio."""
    from distill_serve.server.pipeline.generate import audio_blocks

    stream, block = hifigan_engines
    p = params(block, ChunkMode.LATENT_INTERP, duration_s=1.3, steps_between=2)
    runner = _observed(stream.runner())
    got = np.concatenate(list(audio_blocks(runner, stream.model, p)), axis=1)
    assert runner.whole_clip_runs == 0
    assert snr_db(generate(block, p), got) >= FLOAT32_FLOOR_DB

    legacy = Engine(
        _bundle_before_the_end_input(load_bundle(demo_bundle), tmp_path),
        EngineConfig(use_cuda=False, vocoder_path="stream", live_capacity=0),
    )
    try:
        assert legacy.model.stream is not None and legacy.model.stream.tail_frames is None
        runner = _observed(legacy.runner())
        before = np.concatenate(list(audio_blocks(runner, legacy.model, p)), axis=1)
        assert runner.whole_clip_runs > 0
        assert snr_db(before, got) >= FLOAT32_FLOOR_DB
    finally:
        legacy.close()


def _bundle_before_the_end_input(bundle, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``bundle`` as exported before the streaming graph took ``end``: its graph without the
    input (the masks fixed open-ended, as they were) and its manifest without
    ``tail_frames``."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(bundle.graph("vocoder_stream")))
    (end,) = [i for i in model.graph.input if i.name == "end"]
    model.graph.input.remove(end)
    value = numpy_helper.from_array(np.array([[STREAM_OPEN_END]], np.int64))
    model.graph.node.insert(0, helper.make_node("Constant", [], ["end"], value=value))
    path = tmp_path / "vocoder_stream_without_end.onnx"
    onnx.save(model, str(path))
    files = tuple(
        dataclasses.replace(f, path=str(path)) if f.role == "vocoder_stream" else f
        for f in bundle.files
    )
    stream = {k: v for k, v in bundle.manifest["vocoder"]["stream"].items() if k != "tail_frames"}
    vocoder = dict(bundle.manifest["vocoder"], stream=stream)
    return dataclasses.replace(bundle, files=files, manifest=dict(bundle.manifest, vocoder=vocoder))


def test_bigvgan_stream_path_serves_its_head_from_the_whole_clip_graph(engine: Engine) -> None:
    """The stand-in (BigVGAN) streams by default; its head and tail frames come from the
    whole-clip graph, one run each for a fixed-length clip (its first two blocks reach into
    the head; the first, inside it, waits for no stream step), so the clip equals the block
    path's from the first sample to the last."""
    from distill_serve.server.pipeline.generate import audio_blocks

    assert engine.vocoder_path == "stream" and engine.model.stream is not None
    assert engine.model.stream.head_frames > 16  # past the first block (16 frames)
    block = Engine(engine.bundle, EngineConfig(use_cuda=False, vocoder_path="block"))
    p = params(engine, ChunkMode.LATENT_INTERP, duration_s=1.3, steps_between=2)
    runner = _observed(engine.runner())
    blocks = audio_blocks(runner, engine.model, p)
    first = next(blocks)  # inside the head: its whole-clip run alone, no stream step yet
    assert (runner.whole_clip_runs, runner.steps_seen) == (1, [])
    b = np.concatenate([first, *blocks], axis=1)
    # the head, the tail; the stream between
    assert runner.whole_clip_runs == 2 and runner.steps_seen
    a = generate(block, p)
    np.testing.assert_array_equal(b, generate(engine, p))
    head = engine.model.stream.head_frames * engine.model.geometry.vocoder_hop
    assert snr_db(a[:, :head], b[:, :head]) >= MIN_STREAM_SNR_DB
    assert snr_db(a, b) >= MIN_STREAM_SNR_DB


def test_a_bigvgan_clip_shorter_than_its_head_and_tail_equals_the_block_path(
    engine: Engine,
) -> None:
    """On a clip shorter than BigVGAN's head and tail together (the stand-in: ~0.5 s) the two
    whole-clip stretches overlap, and the head's run covers what they share (both were served
    once, doubling those samples and shifting the rest: 14-18 dB against the block path)."""
    spec, m = engine.model.stream, engine.model
    assert spec is not None and spec.head_frames > 0 and not spec.streams_to_the_end
    block = Engine(engine.bundle, EngineConfig(use_cuda=False, vocoder_path="block"))
    both = (spec.head_frames * m.geometry.vocoder_hop + spec.delay_samples) / m.vocoder_rate
    for share in (0.5, 0.9):
        p = params(engine, duration_s=round(share * both, 3))
        a, b = generate(block, p), generate(engine, p)
        assert a.shape == b.shape == (p.channels, p.total_samples)
        assert snr_db(a, b) >= MIN_STREAM_SNR_DB


def test_live_controls_land_on_the_same_frames_on_both_paths(
    hifigan_engines: tuple[Engine, Engine],
) -> None:
    stream, block = hifigan_engines
    p = params(block, ChunkMode.SLIDER, sample_rate=48000)
    target = block.model.sliders.latent({1: -7}) if block.model.sliders else None  # type: ignore[union-attr]
    control = LiveControl(2, target, None, 0.3, None, 0.0, False)
    runs = []
    for eng in (block, stream):
        session = LiveSession(eng.runner(), eng.model, p, 0.3)
        assert session.vocoder_path == eng.vocoder_path
        blocks = []
        for i in range(14):
            if i == 5:
                session.apply(control)
            blocks.append(session.next_block().audio)
        blocks.append(session.finish().audio)
        runs.append(np.concatenate(blocks, axis=1))
    assert runs[0].shape == runs[1].shape
    assert snr_db(runs[0], runs[1]) >= FLOAT32_FLOOR_DB


def test_a_live_sessions_start_up_blocks_are_the_ones_that_cost_more(
    engine: Engine, hifigan_engines: tuple[Engine, Engine]
) -> None:
    """The blocks a live session holds a start slot for (server/api/start_gate.py) are those
    that feed more frames than their own or run the whole-clip graph as well."""
    stream, block = hifigan_engines
    assert LiveSession(block.runner(), block.model, params(block), 0.3).startup_blocks == 0
    for eng in (engine, stream):  # BigVGAN (a head) and HiFi-GAN (none)
        runner = _observed(eng.runner())
        session = LiveSession(runner, eng.model, params(eng), 0.3)
        costly = []
        for _ in range(session.startup_blocks + 3):
            runner.whole_clip_runs, runner.steps_seen = 0, []
            session.next_block()
            fed = sum(s.frames for s in runner.steps_seen)
            costly.append(runner.whole_clip_runs > 0 or fed > session.block_frames)
        assert costly == [True] * session.startup_blocks + [False] * 3
    assert (LiveSession(engine.runner(), engine.model, params(engine), 0.3).startup_blocks) > 1


def test_bundle_without_the_graph_serves_blocks(stand_in_bundle: Path) -> None:
    bundle = load_bundle(stand_in_bundle)
    files = tuple(f for f in bundle.files if f.role != "vocoder_stream")
    manifest_ = dict(bundle.manifest, vocoder=dict(bundle.manifest["vocoder"], stream=None))
    old = dataclasses.replace(bundle, files=files, manifest=manifest_)
    assert Engine(old, EngineConfig(use_cuda=False)).vocoder_path == "block"
    with pytest.raises(BundleError, match="--vocoder-path block"):
        Engine(old, EngineConfig(use_cuda=False, vocoder_path="stream"))
    with pytest.raises(ValueError, match="fp32"):
        EngineConfig(vocoder_path="stream", vocoder_precision="int8")
    assert (
        Engine(bundle, EngineConfig(use_cuda=False, vocoder_precision="int8")).vocoder_path
        == "block"
    )


def test_server_reports_the_path_and_admits_live_sessions_to_its_capacity(
    stand_in_bundle: Path,
) -> None:
    engine = Engine.from_dir(stand_in_bundle, EngineConfig(use_cuda=False))  # measured
    assert engine.live_capacity >= 1
    s = start_server(engine, max_concurrent=4)
    try:
        with Client(s.target, timeout=30) as c:
            info = c.info()
            assert info.vocoder_path == "stream" and info.live_capacity == engine.live_capacity
            assert engine.capacity is not None
            engine.capacity.fixed = 1  # as --live-capacity 1 would
            try:
                first = c.live("crossfade", seed=1)
                it = iter(first)
                next(it)
                with pytest.raises(DistillError) as busy:
                    list(c.live("crossfade", seed=2))
                assert busy.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "live capacity" in busy.value.details and busy.value.retry_after_ms
                first.stop()
                list(it)
            finally:
                engine.capacity.fixed = None
        assert s.metric("distill_rejected_total", {"reason": "live_capacity"}) == 1
        assert s.metric("distill_vocoder_step_batch_size_count") > 0
        assert s.metric("distill_vocoder_step_cpu_seconds_total") > 0
    finally:
        s.stop()
        engine.close()


def test_operators_can_fix_or_lift_the_live_capacity(stand_in_bundle: Path) -> None:
    bundle = load_bundle(stand_in_bundle)
    fixed = Engine(bundle, EngineConfig(use_cuda=False, live_capacity=3))
    assert fixed.vocoder_path == "stream" and fixed.live_capacity == 3
    unlimited = Engine(bundle, EngineConfig(use_cuda=False, live_capacity=0))
    assert unlimited.live_capacity == 0  # the service admits without limit
    with pytest.raises(ValueError, match="live_capacity"):
        EngineConfig(live_capacity=-1)


def test_a_generations_steps_carry_its_rank(hifigan_engines: tuple[Engine, Engine]) -> None:
    """A fixed-length request's first block asks for first audio, its later blocks are the
    rest; every step of a live session is live."""
    from distill_serve.server.pipeline.generate import audio_blocks

    stream, _ = hifigan_engines
    runner = _observed(stream.runner())
    list(audio_blocks(runner, stream.model, params(stream, duration_s=1.0)))
    ranks = [s.rank for s in runner.steps_seen]
    first = ranks.count(FIRST_AUDIO)
    assert first >= 1 and ranks == [FIRST_AUDIO] * first + [REST] * (len(ranks) - first)
    runner.steps_seen = []
    session = LiveSession(runner, stream.model, params(stream), 0.3)
    for _ in range(3):
        session.next_block()
    ranks = [s.rank for s in runner.steps_seen]
    assert ranks and set(ranks) == {LIVE}


def test_a_stream_row_is_the_same_alone_or_batched(stand_in_bundle: Path) -> None:
    """Batching never changes a reply's bytes: each row of a batched run of the streaming
    graph equals the same step run alone, bit for bit, in the single-threaded sessions the
    engine runs it in (with two intra-op threads BigVGAN's grouped convolutions differ by
    batch size in the last bits; server/engine/scheduler.py)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(load_bundle(stand_in_bundle).graph("vocoder_stream")),
        opts,
        providers=["CPUExecutionProvider"],
    )
    n_mels, size = session.get_inputs()[0].shape[1], session.get_inputs()[3].shape[1]
    rng = np.random.default_rng(0)
    feed = {
        "mel": (rng.standard_normal((4, n_mels, 8)) * 2 - 4).astype(np.float32),
        "position": np.array([[0], [8], [30], [123]], np.int64),
        "end": np.array([[40], [STREAM_OPEN_END], [38], [140]], np.int64),
        "state": (rng.standard_normal((4, size)) * 0.1).astype(np.float32),
    }
    audio, state = session.run(None, feed)
    for i in range(4):
        one = session.run(None, {k: v[i : i + 1] for k, v in feed.items()})
        np.testing.assert_array_equal(one[0][0], audio[i])
        np.testing.assert_array_equal(one[1][0], state[i])
