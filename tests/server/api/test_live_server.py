"""GenerateLive through a real server on loopback: controls reflected in the next block,
pacing, stop, limits, faults and fuzzed control messages."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill_serve.client import Client, DistillError
from distill_serve.server.engine.engine import Engine
from distill_serve.server.pipeline.live import FADE_OUT_S
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, start_server
from tests.server.api.test_server import healthy

EXAMPLES = int(os.environ.get("DISTILL_FUZZ_EXAMPLES", "150"))
SLIDER = {"sliders": {0: 4}, "encoding": "float32", "seed": 21}


@pytest.fixture(scope="module")
def live_server(engine: Engine) -> Iterator[ServerThread]:
    s = start_server(engine, max_concurrent=3, live_idle_timeout_s=2.0)
    yield s
    s.stop()


def collect(session, stop_after: int, change_at: int | None = None, **change):  # type: ignore[no-untyped-def]
    """Read blocks (with arrival times); send ``change`` after block ``change_at`` arrived
    and stop after ``stop_after`` blocks. Returns the blocks, their arrival times, the
    change's (sequence, time sent) and the stop's sequence."""
    blocks, times, sent, stop = [], [], None, None
    for block in session:
        blocks.append(block)
        times.append(time.perf_counter())
        if len(blocks) == change_at:
            sent = (session.set_sliders(**change), time.perf_counter())
        if len(blocks) == stop_after:
            stop = session.stop()
    return blocks, times, sent, stop


def assert_stop_contract(session, blocks, stop_sequence: int, stopped_after: int) -> None:  # type: ignore[no-untyped-def]
    """The stop contract (proto ``LiveControl.stop``): after the stop is sent come the blocks
    the server had already made (any number: it depends on timing; each reflects an earlier
    control), then exactly one fade-out block that reflects the stop, then the end."""
    assert session.end_reason == "stop"
    assert len(blocks) > stopped_after
    *before, fade = blocks
    assert all(b.control_sequence < stop_sequence for b in before)
    assert fade.control_sequence == stop_sequence
    rate = fade.header.sample_rate
    assert rate == 44100  # the stand-in's own rate: no resampler tail after the fade
    assert fade.audio.shape[1] == round(FADE_OUT_S * rate)
    assert np.abs(fade.audio[:, -10:]).max() < 2e-3
    # the offsets tile the stream
    offsets = np.cumsum([0] + [b.audio.shape[1] for b in blocks[:-1]])
    assert [b.sample_offset for b in blocks] == list(offsets)


@pytest.mark.realtime
def test_slider_change_reaches_the_next_block_and_pacing_holds(  # type: ignore[no-untyped-def]
    live_server: ServerThread, report
) -> None:
    lookahead = 0.3
    with Client(live_server.target, timeout=60) as c:
        plain, _, _, _ = collect(c.live("slider", lookahead=lookahead, **SLIDER), 24)
        called = time.perf_counter()
        session = c.live("slider", lookahead=lookahead, **SLIDER)
        blocks, times, sent, stop = collect(session, 24, change_at=8, positions={1: -9})
    assert session.stats is not None and sent is not None and stop is not None
    assert_stop_contract(session, blocks, stop, stopped_after=24)
    sequence, sent_at = sent
    first = next(i for i, b in enumerate(blocks) if b.control_sequence == sequence)
    # The control is in every block from the first that reflects it, which comes after the
    # block it was sent on; before it, byte for byte the unsteered session. (How many blocks
    # were already on their way depends on timing: the latency is reported, not asserted.)
    assert 8 <= first < len(plain) - 1  # (plain's last block is its fade-out)
    for a, b in zip(blocks[:first], plain[:first], strict=True):
        np.testing.assert_array_equal(a.audio, b.audio)
        assert a.control_sequence == 0
    assert not np.array_equal(blocks[first].audio, plain[first].audio)
    assert all(b.control_sequence >= sequence for b in blocks[first:])
    rate = blocks[0].header.sample_rate
    block_s = blocks[0].audio.shape[1] / rate
    latency = times[first] - sent_at
    # Pacing: the server makes a block only once real time has caught up with the audio
    # before it, less the lookahead. Measured from before the call started, so a slow
    # network or machine can only make this hold more easily.
    before = np.cumsum([0.0] + [b.audio.shape[1] / rate for b in blocks[:-1]])
    ahead = before - (np.array(times) - called)
    report(
        f"live over gRPC (lookahead {lookahead} s, blocks {block_s * 1000:.0f} ms): control "
        f"reflected {first - 8 + 1} block(s) after it, {latency * 1000:.0f} ms after sending; "
        f"max ahead of real time {ahead.max():.3f} s"
    )
    assert ahead.max() <= lookahead + 1e-3
    assert (
        live_server.metric(
            "distill_requests_total", {"rpc": "GenerateLive", "mode": "slider", "status": "OK"}
        )
        >= 2
    )


async def test_async_client_live_session(live_server: ServerThread) -> None:
    from distill_serve.client import AsyncClient

    async with AsyncClient(live_server.target, timeout=60) as c:
        session = c.live("crossfade", seed=3, lookahead=0.1, spatial="stereo")
        blocks, stop = [], 0
        async for block in session:
            blocks.append(block)
            assert block.audio.shape[0] == 2
            if len(blocks) == 3:
                session.set_stereo_width(0.2, transition_s=0.1)
            if len(blocks) == 6:
                stop = session.stop()
        assert stop == 2
        assert_stop_contract(session, blocks, stop, stopped_after=6)


def test_limits_concurrency_and_length(engine: Engine) -> None:
    s = start_server(engine, max_concurrent=1, max_live_s=0.5, max_waiting=0)  # refuse at once
    try:
        with Client(s.target, timeout=30) as c:
            session = c.live("crossfade", seed=1)
            it = iter(session)
            first = next(it)
            with pytest.raises(DistillError) as busy:
                list(c.live("crossfade", seed=2))
            assert busy.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert busy.value.retry_after_ms is not None
            rest = list(it)  # the session's own limit ends it, with a fade and a reason
            assert session.end_reason == "max_live_duration"
            total = (first.audio.shape[1] + sum(b.audio.shape[1] for b in rest)) / 44100
            assert 0.5 <= total <= 0.5 + 0.25
        _wait_idle(s)
    finally:
        s.stop()


def _wait_idle(server: ServerThread) -> None:
    deadline = time.time() + 10
    while server.metric("distill_active_generations", {"rpc": "GenerateLive"}) and (
        time.time() < deadline
    ):
        time.sleep(0.05)
    assert server.metric("distill_active_generations", {"rpc": "GenerateLive"}) == 0


def test_cancel_deadline_and_half_close_free_the_slot(live_server: ServerThread) -> None:
    with Client(live_server.target, timeout=30) as c:
        session = c.live("crossfade", seed=4)
        it = iter(session)
        next(it)
        session.close()  # cancel
        _wait_idle(live_server)
        with pytest.raises(DistillError) as late:
            list(c.live("crossfade", seed=3, timeout=0.6))
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_idle(live_server)
    with grpc.insecure_channel(live_server.target) as ch:
        stub = pb_grpc.DistillServiceStub(ch)
        start = pb.GenerateLiveRequest(
            start=pb.LiveStart(spec=pb.GenerationSpec(mode=pb.CHUNK_MODE_CROSSFADE, seed=1))
        )
        msgs = list(stub.GenerateLive(iter([start]), timeout=30))  # half-close after start
    assert msgs[-1].end.reason == "client_closed"
    _wait_idle(live_server)


def test_a_client_that_stops_reading_is_dropped(live_server: ServerThread) -> None:
    """Flow control stops the server's writes; after the idle timeout the session ends."""
    with grpc.insecure_channel(
        live_server.target, options=[("grpc.http2.lookahead_bytes", 16384)]
    ) as ch:
        stub = pb_grpc.DistillServiceStub(ch)
        spec = pb.GenerationSpec(
            mode=pb.CHUNK_MODE_CROSSFADE, seed=1, encoding=pb.AUDIO_ENCODING_FLOAT32,
            spatial=pb.SPATIAL_MODE_DUAL_SEED, sample_rate=96000,
        )  # fmt: skip
        hold = threading.Event()

        def requests() -> Iterator[pb.GenerateLiveRequest]:
            yield pb.GenerateLiveRequest(start=pb.LiveStart(spec=spec, lookahead_s=2.0))
            hold.wait(60)

        call = stub.GenerateLive(requests(), timeout=60)
        next(call)  # the header, then read nothing
        started = time.time()
        while (
            time.time() - started < 40
            and live_server.metric(
                "distill_requests_total",
                {"rpc": "GenerateLive", "mode": "crossfade", "status": "DEADLINE_EXCEEDED"},
            )
            == 0
        ):
            time.sleep(0.2)
        hold.set()
        call.cancel()
    assert time.time() - started < 40
    _wait_idle(live_server)


def test_bad_control_ends_only_its_own_session(live_server: ServerThread) -> None:
    with Client(live_server.target, timeout=60) as c:
        peer = c.live("crossfade", seed=8)
        peer_blocks: list = []  # type: ignore[type-arg]
        stop: list[int] = []

        def play() -> None:
            for block in peer:
                peer_blocks.append(block)
                if len(peer_blocks) == 25:
                    stop.append(peer.stop())

        t = threading.Thread(target=play)
        t.start()
        bad = c.live("slider", **SLIDER)
        with pytest.raises(DistillError) as info:
            for i, _ in enumerate(bad):
                if i == 2:
                    bad.set_sliders({42: 1})
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "sliders" in info.value.details and "42" in info.value.details
        t.join(60)
    assert_stop_contract(peer, peer_blocks, stop[0], stopped_after=25)
    assert healthy(live_server.target)


def test_first_message_must_be_start(live_server: ServerThread) -> None:
    with grpc.insecure_channel(live_server.target) as ch:
        stub = pb_grpc.DistillServiceStub(ch)
        control = pb.GenerateLiveRequest(control=pb.LiveControl(sequence=1))
        for requests, needle in (
            ([control], "LiveStart"),
            ([], "LiveStart"),
            ([pb.GenerateLiveRequest(start=pb.LiveStart(spec=pb.GenerationSpec(
                mode=pb.CHUNK_MODE_CROSSFADE, duration_s=3.0)))], "open-ended"),
            ([pb.GenerateLiveRequest(start=pb.LiveStart(spec=pb.GenerationSpec(
                mode=pb.CHUNK_MODE_CROSSFADE), lookahead_s=30.0))], "lookahead_s"),
        ):  # fmt: skip
            with pytest.raises(grpc.RpcError) as info:
                list(stub.GenerateLive(iter(requests), timeout=30))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert needle in (info.value.details() or "")


@st.composite
def controls(draw: st.DrawFn) -> pb.LiveControl:
    c = pb.LiveControl(sequence=draw(st.integers(0, 3)), stop=draw(st.booleans()))
    f32 = st.floats(allow_nan=True, allow_infinity=True, width=32)
    if draw(st.booleans()):
        c.evolution_amount = draw(f32)
    if draw(st.booleans()):
        c.stereo_width = draw(f32)
    if draw(st.booleans()):
        c.transition_s = draw(st.floats(allow_nan=True, allow_infinity=True))
    which = draw(st.sampled_from(["none", "latent", "sliders"]))
    if which == "latent":
        c.latent.values.extend(draw(st.lists(f32, max_size=70)))
    elif which == "sliders":
        c.sliders.positions.extend(
            pb.SliderPosition(index=i, position=p)
            for i, p in draw(
                st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(-20, 20)), max_size=4)
            )
        )
    return c


def test_fuzzed_controls_get_clean_statuses(live_server: ServerThread, report) -> None:  # type: ignore[no-untyped-def]
    statuses: Counter[str] = Counter()
    start = pb.GenerateLiveRequest(
        start=pb.LiveStart(
            spec=pb.GenerationSpec(
                mode=pb.CHUNK_MODE_SLIDER,
                seed=2,
                spatial=pb.SPATIAL_MODE_STEREO_MID_SIDE,
                sliders=pb.SliderPositions(positions=[pb.SliderPosition(index=0, position=1)]),
            ),
            lookahead_s=0.05,
        )
    )

    with grpc.insecure_channel(live_server.target) as ch:
        stub = pb_grpc.DistillServiceStub(ch)

        @settings(
            max_examples=max(20, EXAMPLES // 3),
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(controls(), min_size=1, max_size=3))
        def check(msgs: list[pb.LiveControl]) -> None:
            stop = pb.LiveControl(sequence=2**63, stop=True)
            requests = [start, *(pb.GenerateLiveRequest(control=m) for m in [*msgs, stop])]
            try:
                replies = list(stub.GenerateLive(iter(requests), timeout=30))
                assert replies[-1].WhichOneof("event") == "end"
                statuses["OK"] += 1
            except grpc.RpcError as exc:
                assert exc.code() in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                ), exc.details()
                statuses[exc.code().name] += 1

        check()
        # Bytes that are no GenerateLiveRequest at all.
        raw = ch.stream_stream(
            "/distill_serve.v1.DistillService/GenerateLive",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        rng = np.random.default_rng(0)
        for _ in range(max(10, EXAMPLES // 10)):
            junk = rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
            try:
                list(raw(iter([start.SerializeToString(), junk]), timeout=30))
                statuses["OK (bytes)"] += 1
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
                statuses[f"{exc.code().name} (bytes)"] += 1
        # ... and as the first message, where the LiveStart belongs (it was INTERNAL)
        with pytest.raises(grpc.RpcError) as first:
            list(raw(iter([b"\xff\xff\xff"]), timeout=30))
        assert first.value.code() == grpc.StatusCode.INVALID_ARGUMENT, first.value.details()
        assert "not a valid protobuf message" in str(first.value.details())
    report(f"fuzz: live control messages -> {dict(statuses)}")
    assert statuses["INVALID_ARGUMENT"] > 0 and statuses["OK"] > 0
    assert healthy(live_server.target)


def test_live_cli_reads_controls_from_stdin(live_server: ServerThread, tmp_path: Path) -> None:
    out = tmp_path / "live.wav"
    script = "wait 0.3\nslider 1=-5 over 0.2\nnot a control\nwait 0.3\nstop\n"
    proc = subprocess.run(
        [sys.executable, "-m", "distill_serve", "live", "--server", live_server.target,
         "--mode", "slider", "--slider", "0=3", "--seed", "5", "--rate", "48000", "-o", str(out)],
        input=script, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "not a control line" in proc.stderr and "ended by stop" in proc.stdout
    audio, rate = sf.read(out)
    # How much audio the script's waits make depends on how fast the server runs (a loaded
    # machine makes less); pacing bounds it from above: the waits plus the lookahead, and
    # the blocks the stop contract lets through.
    assert rate == 48000 and round(FADE_OUT_S * rate) <= audio.shape[0] < 3 * rate
    assert np.abs(audio[-10:]).max() < 2e-3  # it ended with the fade-out
    bad = subprocess.run(
        [sys.executable, "-m", "distill_serve", "live", "--server", live_server.target,
         "--mode", "crossfade", "-o", str(out)],
        input="width 1.0\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
    assert "stereo_width" in bad.stderr


class _GoneContext:
    """A servicer context whose client has gone: ``done`` as given, ``abort`` refused the way
    grpc refuses a status batch on a finished call."""

    def __init__(self, done: bool) -> None:
        self._done = done
        self.aborted = False

    def done(self) -> bool:
        return self._done

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = True
        raise RuntimeError('Failed "execute_batch": (SendStatusFromServerOperation,)')


@pytest.mark.parametrize("done", [True, False])
async def test_ending_a_session_whose_client_went_is_quiet(
    done: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from distill_serve.server.api.admission import Abort
    from distill_serve.server.api.live_rpc import abort_unless_gone

    context = _GoneContext(done)
    with caplog.at_level(logging.INFO):
        await abort_unless_gone(
            context,  # type: ignore[arg-type]
            Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "live session idle"),
        )
    assert context.aborted is not done  # a finished call is not even tried
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "client had gone" in caplog.records[0].getMessage()


def test_session_ends_are_logged_at_info_without_tracebacks(
    live_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), Client(live_server.target, timeout=30) as c:
        session = c.live("crossfade", seed=4)
        it = iter(session)
        next(it)
        session.close()  # cancel
        _wait_idle(live_server)
        stopped = c.live("crossfade", seed=5)
        for i, _ in enumerate(stopped):
            if i == 1:
                stopped.stop()
        _wait_idle(live_server)

        def ends() -> list[str]:
            messages = [r.getMessage() for r in caplog.records]
            return [m for m in messages if m.startswith("live session ended:")]

        deadline = time.monotonic() + 10
        while not any("stop after" in m for m in ends()) and time.monotonic() < deadline:
            time.sleep(0.05)
    # The stopped session's end at INFO with its reason. The cancelled one logs "cancelled by
    # the client" on an idle machine; in one of three runs under a full CPU load only one end
    # line was seen for the two sessions (2026-12-02, not reproduced alone under load): left
    # open in the issue.
    assert any("stop after" in m for m in ends()), ends()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
