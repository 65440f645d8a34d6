"""Through a real gRPC server on loopback: every mode, unary and stream, errors, limits."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from distill_serve.client import Client, DistillError
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, start_server

MODE_OPTIONS = {
    "crossfade": {},
    "latent_interp": {"steps_between": 2},
    "slider": {"sliders": {1: 4, 2: -3}, "evolution_amount": 0.25},
}


def healthy(target: str) -> bool:
    with grpc.insecure_channel(target) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("mode", list(MODE_OPTIONS))
def test_every_mode_unary_and_stream_agree(server: ServerThread, mode: str) -> None:
    with Client(server.target, timeout=60) as c:
        unary = c.generate(mode, 2.2, seed=9, sample_rate=48000, **MODE_OPTIONS[mode])
        streamed = c.generate_streamed(mode, 2.2, seed=9, sample_rate=48000, **MODE_OPTIONS[mode])
        blocks = list(c.stream(mode, 2.2, seed=9, sample_rate=48000, **MODE_OPTIONS[mode]))
    assert unary.audio.shape == (1, round(2.2 * 48000)) and unary.seed == 9
    np.testing.assert_array_equal(unary.audio, streamed.audio)  # bit-identical
    assert len(blocks) >= 3
    offsets = np.cumsum([0] + [b.audio.shape[1] for b in blocks[:-1]])
    assert [b.sample_offset for b in blocks] == list(offsets)
    assert [b.sequence for b in blocks] == list(range(len(blocks)))
    np.testing.assert_array_equal(np.concatenate([b.audio for b in blocks], axis=1), unary.audio)
    assert unary.stats is not None and unary.stats.execution_provider == "CPUExecutionProvider"


def test_stream_messages_follow_the_contract(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.DistillServiceStub(ch)
        spec = pb.GenerationSpec(
            mode=pb.CHUNK_MODE_CROSSFADE,
            duration_s=1.5,
            seed=1,
            spatial=pb.SPATIAL_MODE_STEREO_MID_SIDE,
            encoding=pb.AUDIO_ENCODING_FLOAT32,
        )
        msgs = list(stub.GenerateStream(pb.GenerateStreamRequest(spec=spec), timeout=60))
        unary = stub.Generate(pb.GenerateRequest(spec=spec), timeout=60)
    kinds = [m.WhichOneof("event") for m in msgs]
    assert kinds[0] == "header" and kinds[-1] == "end" and set(kinds[1:-1]) == {"audio"}
    h = msgs[0].header
    assert (h.format.sample_rate, h.format.channels, h.seed) == (44100, 2, 1)
    assert h.format.total_samples == round(1.5 * 44100)
    assert sum(m.audio.num_samples for m in msgs[1:-1]) == h.format.total_samples
    assert b"".join(m.audio.data for m in msgs[1:-1]) == unary.audio  # byte-identical
    end = msgs[-1].end.stats
    assert 0 < end.time_to_first_audio_s < end.total_s and end.vocoder_blocks >= 3


def test_determinism_and_server_chosen_seed(server: ServerThread) -> None:
    with Client(server.target, timeout=60) as c:
        a = c.generate("crossfade", 1.0, seed=123)
        b = c.generate("crossfade", 1.0, seed=123)
        free = c.generate("crossfade", 1.0)
        again = c.generate("crossfade", 1.0, seed=free.seed)
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(free.audio, again.audio)


@pytest.mark.parametrize(("encoding", "width"), [("pcm16", 2), ("pcm24", 3), ("float32", 4)])
def test_encodings_and_wav_container(server: ServerThread, encoding: str, width: int) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.DistillServiceStub(ch)
        spec = pb.GenerationSpec(
            mode=pb.CHUNK_MODE_CROSSFADE,
            duration_s=0.5,
            seed=2,
            sample_rate=22050,
            encoding={"pcm16": 1, "pcm24": 2, "float32": 3}[encoding],
        )
        raw = stub.Generate(pb.GenerateRequest(spec=spec), timeout=60)
        wav = stub.Generate(pb.GenerateRequest(spec=spec, container=pb.CONTAINER_WAV), timeout=60)
    assert len(raw.audio) == round(0.5 * 22050) * width
    assert wav.audio[:4] == b"RIFF" and wav.format.container == pb.CONTAINER_WAV
    import io

    import soundfile as sf

    info = sf.info(io.BytesIO(wav.audio))
    assert (info.samplerate, info.channels, info.frames) == (22050, 1, round(0.5 * 22050))


def test_model_info(server: ServerThread) -> None:
    with Client(server.target, timeout=10) as c:
        info = c.info()
    assert info.latent_dim == 64 and len(info.sliders) == 8
    assert info.sliders[0].label == "brightness" and info.sliders[0].max_position == 10
    assert 44100 in info.sample_rates and 96000 in info.sample_rates
    assert info.execution_provider == "CPUExecutionProvider"
    assert info.vocoder_precision == "fp32"
    roles = {
        "decoder", "bridge", "vocoder", "vocoder_int8", "vocoder_fp16", "vocoder_stream",
        "resampler",
    }  # fmt: skip
    assert {f[1] for f in info.files} == roles
    assert info.max_duration_s == 60.0


def _status(target: str, spec: pb.GenerationSpec, stream: bool = False) -> grpc.RpcError:
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.DistillServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            if stream:
                list(stub.GenerateStream(pb.GenerateStreamRequest(spec=spec), timeout=30))
            else:
                stub.Generate(pb.GenerateRequest(spec=spec), timeout=30)
    return info.value


CROSSFADE = pb.CHUNK_MODE_CROSSFADE
SLIDER = pb.CHUNK_MODE_SLIDER
BAD_SPECS = {
    "negative duration": (pb.GenerationSpec(mode=CROSSFADE, duration_s=-1), "duration_s"),
    "zero duration": (pb.GenerationSpec(mode=CROSSFADE, duration_s=0), "duration_s"),
    "NaN duration": (pb.GenerationSpec(mode=CROSSFADE, duration_s=float("nan")), "duration_s"),
    "huge duration": (pb.GenerationSpec(mode=CROSSFADE, duration_s=1e12), "duration_s"),
    "NaN latent": (
        pb.GenerationSpec(
            mode=SLIDER, duration_s=1, latent=pb.LatentVector(values=[float("nan")] * 64)
        ),
        "latent",
    ),
    "short latent": (
        pb.GenerationSpec(mode=SLIDER, duration_s=1, latent=pb.LatentVector(values=[0.0] * 10)),
        "latent",
    ),
    "slider out of range": (
        pb.GenerationSpec(
            mode=SLIDER,
            duration_s=1,
            sliders=pb.SliderPositions(positions=[pb.SliderPosition(index=0, position=11)]),
        ),
        "outside [-10, 10]",
    ),
    "unknown slider": (
        pb.GenerationSpec(
            mode=SLIDER,
            duration_s=1,
            sliders=pb.SliderPositions(positions=[pb.SliderPosition(index=40, position=1)]),
        ),
        "does not exist",
    ),
    "unsupported rate": (
        pb.GenerationSpec(mode=CROSSFADE, duration_s=1, sample_rate=11025),
        "11025 Hz is not offered",
    ),
    "haas width over 1.5": (
        pb.GenerationSpec(
            mode=CROSSFADE, duration_s=1, spatial=pb.SPATIAL_MODE_STEREO_HAAS, stereo_width=1.6
        ),
        "stereo_width: must be in [0, 1.5]",
    ),
    "depth without haas": (
        pb.GenerationSpec(mode=CROSSFADE, duration_s=1, stereo_depth=0.5),
        "applies to spatial haas only",
    ),
    "unknown encoding": (pb.GenerationSpec(mode=CROSSFADE, duration_s=1, encoding=42), "encoding"),
    "empty request": (pb.GenerationSpec(), "mode"),
    "latent in crossfade": (
        pb.GenerationSpec(mode=CROSSFADE, duration_s=1, latent=pb.LatentVector(values=[0.0] * 64)),
        "need mode slider",
    ),
}


@pytest.mark.parametrize("name", list(BAD_SPECS))
@pytest.mark.parametrize("stream", [False, True])
def test_invalid_input_gets_invalid_argument(server: ServerThread, name: str, stream: bool) -> None:
    spec, needle = BAD_SPECS[name]
    err = _status(server.target, spec, stream)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert needle in err.details()
    assert healthy(server.target)


def test_unknown_container_and_client_error_type(server: ServerThread) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.DistillServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Generate(
                pb.GenerateRequest(
                    spec=pb.GenerationSpec(mode=CROSSFADE, duration_s=1), container=9
                ),
                timeout=10,
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with Client(server.target) as c, pytest.raises(DistillError) as derr:
        c.generate("crossfade", -3.0)
    assert derr.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "duration_s" in derr.value.details


def test_slider_mode_on_bundle_without_analysis(stand_in_bundle, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import shutil

    from distill_serve.bundle import load_bundle, write_manifest

    b = tmp_path / "nosliders"
    shutil.copytree(stand_in_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["sliders"] = None
    write_manifest(b, m)  # re-sealed: a bundle exported from a checkpoint with no analysis
    assert load_bundle(b).manifest["sliders"] is None
    s = start_server(Engine.from_dir(b, EngineConfig(use_cuda=False)))
    try:
        spec = pb.GenerationSpec(
            mode=SLIDER,
            duration_s=1,
            sliders=pb.SliderPositions(positions=[pb.SliderPosition(index=0, position=1)]),
        )
        err = _status(s.target, spec)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no slider analysis" in err.details()
        with Client(s.target, timeout=60) as c:  # a latent vector still works
            assert c.generate("slider", 0.5, latent=np.zeros(64)).audio.shape == (1, 22050)
            assert c.info().sliders == []
    finally:
        s.stop()


def test_concurrency_limit_and_cancellation_free_slots(engine: Engine) -> None:
    s = start_server(engine, max_concurrent=1)
    try:
        with grpc.insecure_channel(s.target) as ch:
            stub = pb_grpc.DistillServiceStub(ch)
            spec = pb.GenerationSpec(mode=CROSSFADE, duration_s=30, seed=1)
            call = stub.GenerateStream(pb.GenerateStreamRequest(spec=spec), timeout=60)
            assert next(call).WhichOneof("event") == "header"
            assert next(call).WhichOneof("event") == "audio"
            busy = _status(s.target, pb.GenerationSpec(mode=CROSSFADE, duration_s=1))
            assert busy.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "retry after" in busy.details()
            assert ("retry-after-ms", "500") in busy.trailing_metadata()
            call.cancel()  # client cancels mid-stream
            deadline = time.time() + 10
            while (
                s.metric("distill_active_generations", {"rpc": "GenerateStream"})
                and time.time() < deadline
            ):
                time.sleep(0.05)
            with Client(s.target, timeout=60) as c:
                assert c.generate("crossfade", 0.5).audio.shape == (1, 22050)
        assert (
            s.metric(
                "distill_requests_total",
                {"rpc": "GenerateStream", "mode": "crossfade", "status": "CANCELLED"},
            )
            == 1
        )
        assert s.metric("distill_rejected_total", {"reason": "resource_exhausted"}) == 1
    finally:
        s.stop()


def test_deadline_exceeded_frees_slot(engine: Engine) -> None:
    s = start_server(engine, max_concurrent=1)
    try:
        with grpc.insecure_channel(s.target) as ch:
            stub = pb_grpc.DistillServiceStub(ch)
            spec = pb.GenerationSpec(mode=CROSSFADE, duration_s=40, seed=1)
            with pytest.raises(grpc.RpcError) as info:
                stub.Generate(pb.GenerateRequest(spec=spec), timeout=0.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.time() + 10
        while (
            s.metric("distill_active_generations", {"rpc": "Generate"}) and time.time() < deadline
        ):
            time.sleep(0.05)
        with Client(s.target, timeout=60) as c:
            assert c.generate("crossfade", 0.3).audio.shape[1] == round(0.3 * 44100)
    finally:
        s.stop()


def test_cuda_oom_fallback_answers_request(stand_in_bundle) -> None:  # type: ignore[no-untyped-def]
    from distill_serve.server.api.server import ServerConfig
    from tests.conftest import ServerThread

    config = EngineConfig(use_cuda=False, fault_injection=True, vocoder_path="block")
    eng = Engine.from_dir(stand_in_bundle, config)
    s = ServerThread(ServerConfig(port=0), eng)
    try:
        with Client(s.target, timeout=60) as c:
            reference = c.generate("latent_interp", 1.5, seed=5)
            eng.inject_oom(1)
            rescued = c.generate("latent_interp", 1.5, seed=5)
            eng.inject_oom(1)
            streamed = c.generate_streamed("latent_interp", 1.5, seed=5)
        np.testing.assert_array_equal(rescued.audio, reference.audio)
        np.testing.assert_array_equal(streamed.audio, reference.audio)
        assert rescued.stats is not None and rescued.stats.cpu_fallbacks == 1
        assert rescued.stats.execution_provider == "CPUExecutionProvider"
        assert s.metric("distill_cuda_fallbacks_total", {"graph": "decoder"}) == 2
    finally:
        s.stop()


def test_health_and_reflection(server: ServerThread) -> None:
    assert healthy(server.target)
    with grpc.insecure_channel(server.target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"distill_serve.v1.DistillService", "grpc.health.v1.Health"} <= names


def test_concurrent_requests_all_complete(server: ServerThread) -> None:
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            with Client(server.target, timeout=60) as c:
                results.append(c.generate_streamed("crossfade", 1.0, seed=seed).audio)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
