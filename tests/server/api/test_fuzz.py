"""Property-based fuzzing over gRPC: arbitrary requests only ever get OK or a clean client
error status (never UNKNOWN or INTERNAL), and the server stays healthy afterwards.

``DISTILL_FUZZ_EXAMPLES`` sets the number of examples per test (default 150).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill_serve.codecs import read_file
from distill_serve.server.api.server import ServerConfig
from distill_serve.server.engine.engine import Engine
from distill_serve.server.pipeline.request import Limits
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc
from tests.conftest import ServerThread

EXAMPLES = int(os.environ.get("DISTILL_FUZZ_EXAMPLES", "150"))
CLEAN = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,  # a model the server does not have
}
ADMIN = "fuzz-admin"
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1e-300, 0.05, 0.25, 1.0, 2.0, 60.0, 60.0001, 1e308]),
)
small_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 3, 16, 17, 2**32 - 1]))
rates = st.one_of(st.sampled_from([0, 16000, 44100, 48000, 96000, 11025, 8000]), u32)
enums = st.integers(-(2**31), 2**31 - 1)
model_names = st.one_of(
    st.text(max_size=40), st.sampled_from(["", ".", "..", "../etc", "a/b", "x" * 5000])
)


@st.composite
def specs(draw: st.DrawFn) -> pb.GenerationSpec:
    spec = pb.GenerationSpec(
        mode=draw(st.one_of(st.sampled_from([0, 1, 2, 3]), enums)),
        duration_s=draw(floats),
        sample_rate=draw(rates),
        encoding=draw(st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5]), enums)),
        spatial=draw(st.one_of(st.sampled_from([0, 1, 2, 3]), enums)),
    )
    if draw(st.booleans()):
        spec.bitrate_bps = draw(st.one_of(st.sampled_from([5999, 6000, 510000, 510001]), u32))
    if draw(st.booleans()):
        spec.bits_per_sample = draw(st.one_of(st.sampled_from([8, 16, 24, 32]), u32))
    if draw(st.booleans()):
        spec.seed = draw(st.integers(0, 2**64 - 1))
    if draw(st.booleans()):
        spec.stereo_width = draw(small_floats)
    if draw(st.booleans()):
        spec.steps_between = draw(u32)
    if draw(st.booleans()):
        spec.evolution_amount = draw(small_floats)
    if draw(st.booleans()):
        spec.chunk_duration_s = draw(floats)
    if draw(st.booleans()):
        spec.model = draw(model_names)
    which = draw(st.sampled_from(["none", "latent", "sliders", "huge"]))
    if which == "latent":
        spec.latent.values.extend(draw(st.lists(small_floats, max_size=80)))
    elif which == "sliders":
        spec.sliders.positions.extend(
            pb.SliderPosition(index=i, position=p)
            for i, p in draw(st.lists(st.tuples(u32, enums), max_size=12))
        )
    elif which == "huge":
        spec.latent.values.extend([0.5] * draw(st.sampled_from([64, 5000, 300_000])))
    return spec


@pytest.fixture(scope="module")
def fuzz_server(engine: Engine) -> Iterator[ServerThread]:
    # Short clips keep the valid requests among the fuzz cases cheap.
    limits = Limits(max_duration_s=0.6, max_concurrent=2, max_steps_between=4)
    s = ServerThread(ServerConfig(port=0, limits=limits, admin_tokens=(ADMIN,)), engine)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.target) as ch:
        yield ch


def _assert_healthy(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_fuzzed_specs_get_clean_statuses(channel: grpc.Channel, report) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.DistillServiceStub(channel)
    seen: Counter[str] = Counter()

    @FUZZ_SETTINGS
    @given(spec=specs(), stream=st.booleans(), container=st.sampled_from([0, 1, 2, 3, 4, 7]))
    def check(spec: pb.GenerationSpec, stream: bool, container: int) -> None:
        try:
            if stream:
                msgs = list(stub.GenerateStream(pb.GenerateStreamRequest(spec=spec), timeout=60))
                assert msgs[0].WhichOneof("event") == "header"
                assert msgs[-1].WhichOneof("event") == "end"
            else:
                stub.Generate(pb.GenerateRequest(spec=spec, container=container), timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
            assert "Traceback" not in (exc.details() or "")
        seen[code.name] += 1
        assert code in CLEAN, f"{code}: {spec}"

    check()
    report(f"fuzz: {sum(seen.values())} arbitrary specs -> {dict(seen)}")
    assert sum(seen.values()) >= EXAMPLES
    _assert_healthy(channel)


def test_random_bytes_get_clean_statuses(channel: grpc.Channel, report) -> None:  # type: ignore[no-untyped-def]
    seen: Counter[str] = Counter()
    methods = [
        channel.unary_unary("/distill_serve.v1.DistillService/Generate"),
        channel.unary_unary("/distill_serve.v1.DistillService/GetModelInfo"),
        channel.unary_unary("/distill_serve.v1.DistillService/ListModels"),
    ]
    stream = channel.unary_stream("/distill_serve.v1.DistillService/GenerateStream")

    @FUZZ_SETTINGS
    @given(data=st.binary(max_size=512), which=st.integers(0, 3))
    def check(data: bytes, which: int) -> None:
        try:
            if which == 3:
                list(stream(data, timeout=60))
            else:
                methods[which](data, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        seen[code.name] += 1
        assert code in CLEAN, code

    check()
    report(f"fuzz: {sum(seen.values())} random byte strings -> {dict(seen)}")
    _assert_healthy(channel)


@st.composite
def valid_specs(draw: st.DrawFn) -> pb.GenerationSpec:
    mode = draw(st.sampled_from([1, 2, 3]))
    spec = pb.GenerationSpec(
        mode=mode,
        duration_s=draw(st.floats(1e-4, 0.6)),
        sample_rate=draw(st.sampled_from([0, 16000, 22050, 24000, 32000, 44100, 48000, 96000])),
        encoding=draw(st.sampled_from([0, 1, 2, 3, 4, 5])),
        spatial=draw(st.sampled_from([0, 1, 2, 3])),
        seed=draw(st.integers(0, 2**63 - 2)),
    )
    if spec.encoding == pb.AUDIO_ENCODING_OPUS:
        spec.sample_rate = draw(st.sampled_from([0, 16000, 24000, 48000]))
        if draw(st.booleans()):
            spec.bitrate_bps = draw(st.integers(6000, 510000))
    if spec.encoding == pb.AUDIO_ENCODING_FLAC and draw(st.booleans()):
        spec.bits_per_sample = draw(st.sampled_from([16, 24]))
    if draw(st.booleans()):
        spec.stereo_width = draw(st.floats(0.0, 2.0, width=32))
    if draw(st.booleans()):
        spec.chunk_duration_s = draw(st.floats(0.08, 1.0))
    if mode == 2:
        spec.steps_between = draw(st.integers(0, 4))
    if mode == 3:
        spec.evolution_amount = draw(st.floats(0.0, 1.0, width=32))
        if draw(st.booleans()):
            spec.latent.values.extend(
                draw(st.lists(st.floats(-50, 50, width=32), min_size=64, max_size=64))
            )
        else:
            spec.sliders.positions.extend(
                pb.SliderPosition(index=i, position=p)
                for i, p in draw(st.dictionaries(st.integers(0, 7), st.integers(-10, 10))).items()
            )
            if not spec.sliders.positions:
                spec.sliders.positions.add(index=0, position=0)
    return spec


def test_valid_specs_always_succeed_with_exact_length(channel: grpc.Channel, report) -> None:  # type: ignore[no-untyped-def]
    stub = pb_grpc.DistillServiceStub(channel)
    count = 0

    @settings(
        max_examples=max(20, EXAMPLES // 5),
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(spec=valid_specs())
    def check(spec: pb.GenerationSpec) -> None:
        nonlocal count
        reply = stub.Generate(pb.GenerateRequest(spec=spec), timeout=60)
        opus = spec.encoding == pb.AUDIO_ENCODING_OPUS
        rate = spec.sample_rate or (48000 if opus else 44100)
        assert reply.format.total_samples == max(1, round(spec.duration_s * rate))
        if spec.encoding in (pb.AUDIO_ENCODING_FLAC, pb.AUDIO_ENCODING_OPUS):
            audio, file_rate = read_file(reply.audio)  # a whole file, decoded to its length
            assert file_rate == rate
            assert audio.shape == (reply.format.channels, reply.format.total_samples)
        else:
            width = {0: 2, 1: 2, 2: 3, 3: 4}[spec.encoding]
            assert len(reply.audio) == reply.format.total_samples * reply.format.channels * width
        count += 1

    check()
    report(f"fuzz: {count} valid specs answered OK with their exact length")


def test_fuzzed_model_control_gets_clean_statuses(  # type: ignore[no-untyped-def]
    channel: grpc.Channel, fuzz_server: ServerThread, report
) -> None:
    """GetModelInfo, LoadModel and UnloadModel with arbitrary names and graces, with and
    without the admin token: clean statuses only, and the server's one model keeps serving
    (an out-of-range grace is refused before anything is unloaded)."""
    stub = pb_grpc.DistillServiceStub(channel)
    model = fuzz_server.server.models.default_name
    admin = [("authorization", f"Bearer {ADMIN}")]
    seen: Counter[str] = Counter()
    allowed = CLEAN | {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED}

    @FUZZ_SETTINGS
    @given(
        name=model_names,
        rpc=st.sampled_from(["info", "load", "unload", "unload_bad_grace"]),
        token=st.booleans(),
        grace=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(-1.0)),
    )
    def check(name: str, rpc: str, token: bool, grace: float) -> None:
        md = admin if token else []
        try:
            if rpc == "info":
                stub.GetModelInfo(pb.GetModelInfoRequest(model=name), timeout=60, metadata=md)
            elif rpc == "load":
                stub.LoadModel(pb.LoadModelRequest(name=name), timeout=60, metadata=md)
            elif rpc == "unload_bad_grace":
                if 0.0 <= grace <= 3600.0:
                    grace = -1.0
                request = pb.UnloadModelRequest(name=model, grace_s=grace)
                stub.UnloadModel(request, timeout=60, metadata=md)
            else:
                if name == model:
                    return
                stub.UnloadModel(pb.UnloadModelRequest(name=name), timeout=60, metadata=md)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        seen[f"{rpc}:{code.name}"] += 1
        assert code in allowed, (rpc, name, code)
        if rpc == "unload_bad_grace":
            expected = (
                grpc.StatusCode.INVALID_ARGUMENT if token else grpc.StatusCode.UNAUTHENTICATED
            )
            assert code == expected
        if rpc in ("load", "unload") and not token:
            assert code == grpc.StatusCode.UNAUTHENTICATED

    check()
    report(f"fuzz: {sum(seen.values())} model-control calls -> {dict(seen)}")
    reply = stub.ListModels(pb.ListModelsRequest(), timeout=60)
    assert [(m.name, m.state) for m in reply.models] == [(model, pb.MODEL_STATE_READY)]
    _assert_healthy(channel)


def test_fuzzed_names_make_no_metric_series(
    channel: grpc.Channel, fuzz_server: ServerThread
) -> None:
    """Made-up model names are counted as "unknown": whatever the fuzz cases above sent, the
    metrics' ``model`` label holds only the server's model (a label per name a client makes
    up would grow the registry without bound)."""
    stub = pb_grpc.DistillServiceStub(channel)
    for name in ("made-up-1", "made-up-2"):  # this test also runs alone
        with pytest.raises(grpc.RpcError):
            stub.Generate(
                pb.GenerateRequest(spec=pb.GenerationSpec(model=name), container=99), timeout=60
            )
    labels = {
        sample.labels["model"]
        for family in fuzz_server.metrics.registry.collect()
        for sample in family.samples
        if "model" in sample.labels
    }
    assert labels <= {fuzz_server.server.models.default_name, "unknown"}, labels
    assert "unknown" in labels
