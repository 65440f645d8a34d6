"""Careless and hostile clients (issue 40), each test a reproduction of the probe that found
the problem: health watches, floods of errors, clients that stop reading or read slowly,
floods of controls, and clients that loop on the retry hint."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distill_serve.client import Client, DistillError
from distill_serve.client.live import start_request
from distill_serve.server.api.logs import ERROR_LOGGERS, GRPC_HANDLER_LOGGER, RateLimitedErrors
from distill_serve.server.engine.engine import Engine
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _watch(target: str, service: str, into: list[int], done: threading.Event) -> None:
    with grpc.insecure_channel(target) as ch:
        replies = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=30
        )
        try:
            for reply in replies:
                into.append(reply.status)
                if done.is_set():
                    replies.cancel()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                into.append(-1)


def test_health_watch_streams_serving_without_a_traceback(server: ServerThread, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.ERROR)
    for service in ("", "distill_serve.v1.DistillService"):
        with grpc.insecure_channel(server.target) as ch:
            replies = health_pb2_grpc.HealthStub(ch).Watch(
                health_pb2.HealthCheckRequest(service=service), timeout=10
            )
            first = next(replies)
            replies.cancel()
        assert first.status == SERVING, service
    assert not [r for r in caplog.records if r.exc_info], caplog.text


def test_a_drain_is_visible_to_new_health_checks_and_finishes_running_streams(
    engine: Engine,
) -> None:
    s = start_server(engine, max_concurrent=4)
    watched: list[int] = []
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(s.target, "", watched, done))
    watcher.start()
    with Client(s.target, timeout=60) as c:
        blocks = c.stream("crossfade", 6.0, seed=2)
        first = next(blocks)
        stopping = asyncio.run_coroutine_threadsafe(s.server.stop(grace=30.0), s.loop)
        time.sleep(0.3)
        with grpc.insecure_channel(s.target) as ch:
            check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == NOT_SERVING
        with pytest.raises(DistillError) as refused:
            c.generate("crossfade", 0.5)
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        assert "draining" in refused.value.details
        rest = list(blocks)  # the running stream finishes whole
    frames = first.audio.shape[1] + sum(b.audio.shape[1] for b in rest)
    assert frames == 6 * first.header.sample_rate
    stopping.result(timeout=60)
    done.set()
    watcher.join(timeout=30)
    assert watched[:1] == [SERVING] and NOT_SERVING in watched
    s.loop.call_soon_threadsafe(s.loop.stop)


def test_a_flood_of_handler_errors_logs_a_few_tracebacks_and_a_count() -> None:
    now = [0.0]
    limit = RateLimitedErrors(burst=3, window_s=60.0, clock=lambda: now[0])
    records = []
    for i in range(2000):
        now[0] = i * 0.01  # 2,000 failures in 20 s
        try:
            raise TypeError("boom")
        except TypeError:
            record = logging.LogRecord(
                GRPC_HANDLER_LOGGER, logging.ERROR, __file__, 1, "Unexpected [TypeError]", (),
                sys.exc_info(),
            )  # fmt: skip
        if limit.filter(record):
            records.append(record)
    assert len(records) == 3
    now[0] = 61.0  # the next window: one line says how many were left out
    late = logging.LogRecord(
        GRPC_HANDLER_LOGGER, logging.ERROR, "", 1, "Unexpected [TypeError]", (), None
    )
    assert limit.filter(late) and "1997 more like it" in late.getMessage()
    warning = logging.LogRecord("x", logging.WARNING, "", 1, "Unexpected [TypeError]", (), None)
    assert limit.filter(warning)  # below ERROR: never limited


def test_the_server_limits_its_error_loggers(server: ServerThread) -> None:
    from distill_serve.server.api import live_rpc, servicer
    from distill_serve.server.engine import scheduler

    for module in (servicer, live_rpc, scheduler):
        assert module.log.name in ERROR_LOGGERS
    for name in ERROR_LOGGERS:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, RateLimitedErrors) for f in filters) == 1, name


#: A client channel that buffers little: no window growth, a 16 KB lookahead.
HELD = [("grpc.http2.lookahead_bytes", 16384), ("grpc.http2.bdp_probe", 0)]
BIG = pb.GenerationSpec(
    mode=pb.CHUNK_MODE_CROSSFADE, duration_s=60.0, sample_rate=96000,
    encoding=pb.AUDIO_ENCODING_FLOAT32, spatial=pb.SPATIAL_MODE_DUAL_SEED,
)  # fmt: skip


def test_streams_whose_clients_stop_reading_are_ended_and_free_their_slots(
    engine: Engine,
) -> None:
    s = start_server(engine, max_concurrent=4, send_budget_s=2.0)
    channels = [grpc.insecure_channel(s.target, HELD) for _ in range(4)]
    try:
        squatters = []
        for ch in channels:  # the probe: four big streams that read only their header
            call = pb_grpc.DistillServiceStub(ch).GenerateStream(
                pb.GenerateStreamRequest(spec=BIG), timeout=120
            )
            assert next(call).WhichOneof("event") == "header"
            squatters.append(call)
        started = time.monotonic()
        with Client(s.target, timeout=60) as c:
            while True:  # a fifth client is served once the budget has run out
                try:
                    served = c.generate("crossfade", 0.5, seed=1)
                    break
                except DistillError as exc:
                    assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                    assert time.monotonic() - started < 30, "the squatters kept their slots"
                    time.sleep(0.2)
        assert served.audio.shape[1] > 0
        for call in squatters:  # each learns why, once it reads on
            with pytest.raises(grpc.RpcError) as ended:
                for _ in call:
                    pass
            assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "read too slowly" in ended.value.details()
        assert s.metric("distill_requests_total", {"status": "RESOURCE_EXHAUSTED"}) >= 4
    finally:
        for ch in channels:
            ch.close()
        s.stop()


def test_a_stream_read_in_real_time_keeps_its_budget(engine: Engine) -> None:
    """A client that reads as the audio plays (here: at real time, through a small window)
    is never ended, though its writes wait most of the time."""
    s = start_server(engine, max_concurrent=4, send_budget_s=1.0)
    try:
        spec = pb.GenerationSpec(mode=pb.CHUNK_MODE_CROSSFADE, duration_s=4.0, sample_rate=48000,
                                 encoding=pb.AUDIO_ENCODING_FLOAT32)  # fmt: skip
        with grpc.insecure_channel(s.target, HELD) as ch:
            started, heard, kinds = time.monotonic(), 0.0, []
            for msg in pb_grpc.DistillServiceStub(ch).GenerateStream(
                pb.GenerateStreamRequest(spec=spec), timeout=60
            ):
                kinds.append(msg.WhichOneof("event"))
                heard += msg.audio.num_samples / 48000
                time.sleep(max(0.0, heard - 0.5 - (time.monotonic() - started)))
        assert kinds[0] == "header" and kinds[-1] == "end"
    finally:
        s.stop()


def test_a_slow_live_reader_is_ended_and_frees_its_live_slot(engine: Engine) -> None:
    s = start_server(engine, max_concurrent=1, send_budget_s=2.0)  # one slot: the reader's
    start = start_request("crossfade", 0.3, 1, None, None, {"encoding": "float32",
                                                           "sample_rate": 96000})  # fmt: skip
    hold = threading.Event()

    def requests():  # type: ignore[no-untyped-def]
        yield start
        hold.wait(60)

    try:
        with grpc.insecure_channel(s.target, HELD) as ch:
            call = pb_grpc.DistillServiceStub(ch).GenerateLive(requests(), timeout=60)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as ended:
                for _ in call:
                    time.sleep(3.0)  # one message every 3 s: ever further behind
            hold.set()
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 40
        with Client(s.target, timeout=60) as c:  # its slot is free again
            session = c.live("crossfade", seed=2)
            blocks = iter(session)
            assert next(blocks).audio.shape[1] > 0
            session.stop()
            assert list(blocks)  # the fade-out
    finally:
        s.stop()


def test_stop_after_a_flood_of_controls_ends_the_session_within_a_second(
    server: ServerThread,
) -> None:
    start = start_request("slider", 0.3, 4, {0: 1}, None, {})
    stop_sent: list[float] = []

    def requests():  # type: ignore[no-untyped-def]
        yield start
        time.sleep(0.5)
        for i in range(5000):  # a fader flood: 5,000 moves as fast as the client can send
            yield pb.GenerateLiveRequest(
                control=pb.LiveControl(
                    sequence=i + 1,
                    sliders=pb.SliderPositions(
                        positions=[pb.SliderPosition(index=i % 4, position=i % 11)]
                    ),
                )
            )
        stop_sent.append(time.monotonic())
        yield pb.GenerateLiveRequest(control=pb.LiveControl(sequence=5001, stop=True))
        time.sleep(30)  # keep the request stream open

    with grpc.insecure_channel(server.target) as ch:
        ended_at, reason = 0.0, ""
        for msg in pb_grpc.DistillServiceStub(ch).GenerateLive(requests(), timeout=60):
            if msg.WhichOneof("event") == "end":
                ended_at, reason = time.monotonic(), msg.end.reason
                break
    assert reason == "stop" and stop_sent
    assert ended_at - stop_sent[0] < 1.0


def test_eight_looping_clients_that_obey_the_retry_hint_each_get_served(engine: Engine) -> None:
    """The probe: 8 clients loop 2 s streams against 4 slots, sleeping the retry hint after
    each refusal. Without a queue some were never served; in turn, each is."""
    s = start_server(engine, max_concurrent=4)
    completed = [0] * 8
    until = time.monotonic() + 15.0

    def loop(i: int) -> None:
        with Client(s.target, timeout=60) as c:
            while time.monotonic() < until:
                try:
                    for _ in c.stream("crossfade", 2.0, seed=i):
                        pass
                    completed[i] += 1
                except DistillError as exc:
                    assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                    time.sleep((exc.retry_after_ms or 500) / 1000)

    try:
        threads = [threading.Thread(target=loop, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert all(n >= 1 for n in completed), completed
        assert max(completed) - min(completed) <= max(2, max(completed) // 2), completed
    finally:
        s.stop()
