"""The web edge's protocol spoken directly (docs/api.md, "WebSocket and HTTP"): a live
session over WebSocket equals the gRPC one with the same settings, and every careless or
hostile message gets a clear close code or error while the server keeps serving and leaves
no session behind."""

from __future__ import annotations

import asyncio
import io
import json
import queue
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import soundfile as sf

from distill_serve.server.engine.engine import Engine
from distill_serve.server.web.protocol import AUDIO_HEADER, FLAG_OPUS
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc
from tests.server.web.conftest import WebServer

SPEC = {
    "mode": "CHUNK_MODE_SLIDER",
    "seed": "3",
    "sampleRate": 48000,
    "encoding": "AUDIO_ENCODING_FLOAT32",
    "sliders": {"positions": [{"index": 0, "position": 4}]},
}
START = {"start": {"spec": SPEC, "lookaheadS": 0.3}}
STOP = {"control": {"sequence": "1", "stop": True}}


@dataclass
class Socket:
    """What a WebSocket client saw: JSON messages, audio frames, the close code."""

    texts: list[dict[str, Any]] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)
    close_code: int | None = None

    @property
    def error(self) -> dict[str, Any]:
        return next(t["error"] for t in self.texts if "error" in t)


async def _talk(
    url: str,
    messages: list[Any],
    blocks: int = 0,
    then: list[Any] | None = None,
    protocols: tuple[str, ...] = ("distill.v1",),
    headers: dict[str, str] | None = None,
    drop: bool = False,
) -> Socket:
    """Send ``messages`` (dicts as JSON, str as text, bytes as binary); after ``blocks`` audio
    frames send ``then`` (or drop the socket when ``drop``); read until the socket closes."""
    seen = Socket()
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, protocols=protocols, headers=headers) as ws,
    ):
        for m in messages:
            await _send(ws, m)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                seen.texts.append(json.loads(msg.data))
            elif msg.type is aiohttp.WSMsgType.BINARY:
                seen.frames.append(msg.data)
                if blocks and len(seen.frames) == blocks:
                    if drop:
                        break
                    for m in then or ():
                        await _send(ws, m)
        seen.close_code = ws.close_code
    return seen


async def _send(ws: aiohttp.ClientWebSocketResponse, m: Any) -> None:
    if isinstance(m, bytes):
        await ws.send_bytes(m)
    elif isinstance(m, str):
        await ws.send_str(m)
    else:
        await ws.send_str(json.dumps(m))


def talk(url: str, messages: list[Any], **kw: Any) -> Socket:
    return asyncio.run(asyncio.wait_for(_talk(url, messages, **kw), 120))


def payloads(frames: list[bytes]) -> tuple[bytes, list[bytes]]:
    """PCM bytes and Opus packets of audio frames, from their headers."""
    pcm, packets = b"", []
    for f in frames:
        kind, flags, count, *_ = AUDIO_HEADER.unpack_from(f)
        assert kind == 1
        body = f[AUDIO_HEADER.size :]
        if flags & FLAG_OPUS:
            at = 0
            for _ in range(count):
                (n,) = struct.unpack_from("<H", body, at)
                packets.append(body[at + 2 : at + 2 + n])
                at += 2 + n
            assert at == len(body)
        else:
            pcm += body
    return pcm, packets


def grpc_live(target: str, start: pb.LiveStart, blocks: int) -> list[pb.AudioChunk]:
    """The first ``blocks`` audio chunks of a gRPC live session, then stop."""
    controls: queue.Queue[pb.GenerateLiveRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.GenerateLiveRequest]:
        yield pb.GenerateLiveRequest(start=start)
        while (r := controls.get()) is not None:
            yield r

    chunks = []
    with grpc.insecure_channel(target) as ch:
        for reply in pb_grpc.DistillServiceStub(ch).GenerateLive(requests(), timeout=120):
            if reply.WhichOneof("event") == "audio":
                chunks.append(reply.audio)
                if len(chunks) == blocks:
                    controls.put(
                        pb.GenerateLiveRequest(control=pb.LiveControl(sequence=1, stop=True))
                    )
                    controls.put(None)
    return chunks[:blocks]


def wait_for_no_sessions(web: WebServer, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while web.live_sessions() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert web.live_sessions() == 0, "a live session outlived its socket"


def still_serving(web: WebServer) -> None:
    """A fresh session gets its audio: the server kept serving."""
    seen = talk(web.ws_url, [START], blocks=2, then=[STOP])
    assert len(seen.frames) >= 2 and seen.close_code == 1000, seen.texts
    wait_for_no_sessions(web)


# --- the same audio as gRPC -----------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["AUDIO_ENCODING_FLOAT32", "AUDIO_ENCODING_OPUS"])
def test_a_websocket_session_equals_the_grpc_session(web: WebServer, encoding: str) -> None:
    spec = {**SPEC, "encoding": encoding}
    blocks = 8
    seen = talk(
        web.ws_url, [{"start": {"spec": spec, "lookaheadS": 0.3}}], blocks=blocks, then=[STOP]
    )
    assert seen.close_code == 1000
    assert seen.texts[0]["header"]["format"]["encoding"] == encoding
    assert seen.texts[-1]["end"]["reason"] == "stop"
    pcm, packets = payloads(seen.frames[:blocks])

    start = pb.LiveStart(lookahead_s=0.3)
    start.spec.CopyFrom(
        pb.GenerationSpec(
            mode=pb.CHUNK_MODE_SLIDER,
            seed=3,
            sample_rate=48000,
            encoding=getattr(pb, encoding),
            sliders=pb.SliderPositions(positions=[pb.SliderPosition(index=0, position=4)]),
        )
    )
    chunks = grpc_live(web.target, start, blocks)
    if encoding == "AUDIO_ENCODING_OPUS":
        assert packets and packets == [p for c in chunks for p in c.packets]
    else:
        assert len(pcm) > 0 and pcm == b"".join(c.data for c in chunks)
        # the header's fields are the chunk's
        for f, c in zip(seen.frames, chunks, strict=False):
            _, _, _, sequence, frames, control, offset, _ = AUDIO_HEADER.unpack_from(f)
            assert (sequence, frames, control, offset) == (
                c.sequence, c.num_samples, c.control_sequence, c.sample_offset
            )  # fmt: skip
    wait_for_no_sessions(web)


def test_a_timeline_session_carries_positions(web: WebServer) -> None:
    start = {"start": {"spec": SPEC, "lookaheadS": 0.3, "startPosition": "96000", "unpaced": True}}
    seen = talk(web.ws_url, [start], blocks=3, then=[STOP])
    positions = [AUDIO_HEADER.unpack_from(f)[7] for f in seen.frames[:3]]
    flags = {AUDIO_HEADER.unpack_from(f)[1] for f in seen.frames[:3]}
    assert positions[0] == 96000 and positions == sorted(positions) and flags == {2}


def test_controls_steer_the_session_and_refusals_come_back(web: WebServer) -> None:
    control = {
        "control": {"sequence": "1", "sliders": {"positions": [{"index": 1, "position": -6}]}}
    }
    stop = {"control": {"sequence": "2", "stop": True}}
    seen = talk(web.ws_url, [START, control], blocks=6, then=[stop])
    controls = [AUDIO_HEADER.unpack_from(f)[5] for f in seen.frames]
    assert max(controls) >= 1, "no block reflects the control"
    assert seen.close_code == 1000
    # a positioned control in a plain session is refused; the session plays on
    positioned = {"control": {"sequence": "1", "position": "48000", "evolutionAmount": 0.2}}
    seen = talk(web.ws_url, [START, positioned], blocks=4, then=[stop])
    refused = [t["refused"] for t in seen.texts if "refused" in t]
    assert refused and refused[0]["sequence"] == "1", seen.texts
    assert len(seen.frames) >= 4 and seen.close_code == 1000


# --- careless and hostile clients -----------------------------------------------------------
@pytest.mark.parametrize(
    ("messages", "says"),
    [
        (["{not json"], "not a JSON GenerateLiveRequest"),
        ([{"start": {"spec": SPEC, "bogus": 1}}], 'no field named "bogus"'),
        ([{"control": {"sequence": "1"}}], "must carry a LiveStart"),
        ([b"\x00\x01"], "send JSON text messages"),
        ([{"start": {"spec": {**SPEC, "sampleRate": 7}}}], "sample_rate"),
        ([{"start": {"spec": SPEC, "lookaheadS": 99}}], "lookahead"),
    ],
    ids=["bad-json", "unknown-field", "control-first", "binary", "bad-rate", "bad-lookahead"],
)
def test_bad_messages_get_invalid_argument(web: WebServer, messages: list[Any], says: str) -> None:
    seen = talk(web.ws_url, messages)
    assert seen.close_code == 4003, (seen.close_code, seen.texts)
    assert seen.error["code"] == "INVALID_ARGUMENT" and says in seen.error["message"], seen.error
    wait_for_no_sessions(web)


def test_bad_controls_mid_session_end_it_with_invalid_argument(web: WebServer) -> None:
    seen = talk(web.ws_url, [START], blocks=2, then=["[1, 2"])
    assert seen.close_code == 4003 and "after sequence 0" in seen.error["message"], seen.texts
    still_serving(web)


def test_an_oversized_message_closes_with_1009(web: WebServer) -> None:
    seen = talk(web.ws_url, [START], blocks=2, then=["x" * 200_000])
    assert seen.close_code == 1009
    wait_for_no_sessions(web)
    still_serving(web)


def test_a_socket_dropped_mid_session_ends_it_at_once(web: WebServer) -> None:
    cancelled = web.metric("distill_requests_total", {"rpc": "GenerateLive", "status": "CANCELLED"})
    seen = talk(web.ws_url, [START], blocks=3, drop=True)
    assert len(seen.frames) == 3
    wait_for_no_sessions(web, within_s=2.0)
    after = web.metric("distill_requests_total", {"rpc": "GenerateLive", "status": "CANCELLED"})
    assert after == cancelled + 1
    still_serving(web)


def test_a_socket_without_the_subprotocol_is_told_to_offer_it(web: WebServer) -> None:
    seen = talk(web.ws_url, [START], protocols=())
    assert seen.close_code == 4003 and "distill.v1" in seen.error["message"]


def test_a_full_server_refuses_with_a_retry_hint(engine: Engine) -> None:
    web = WebServer(engine, limits={"max_concurrent": 1, "max_waiting": 0})
    try:

        async def two() -> Socket:
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(web.ws_url, protocols=("distill.v1",)) as first,
            ):
                await first.send_str(json.dumps(START))
                await first.receive()  # its header: it holds the slot
                second = await _talk(web.ws_url, [START])
                async with http.post(
                    f"{web.url}/api/generate",
                    data=json.dumps({"spec": {**SPEC, "durationS": 1.0}}),
                ) as busy:
                    assert busy.status == 429
                    assert int(busy.headers["Retry-After"]) >= 1
                    body = await busy.json()
                    assert body["error"]["code"] == "RESOURCE_EXHAUSTED"
                return second

        second = asyncio.run(asyncio.wait_for(two(), 60))
        assert second.close_code == 4008
        assert second.error["code"] == "RESOURCE_EXHAUSTED" and second.error["retryAfterMs"] > 0
        wait_for_no_sessions(web)
    finally:
        web.stop()


# --- HTTP: models, info, downloads ------------------------------------------------------------
def test_models_info_and_status(web: WebServer) -> None:
    async def get(path: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(web.url + path) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    models = asyncio.run(get("/api/models"))
    assert models["defaultModel"] and models["models"][0]["state"] == "MODEL_STATE_READY"
    info = asyncio.run(get("/api/info"))
    assert info["latentDim"] == 64 and info["sliders"]
    s = info["sliders"][0]
    assert s["minPosition"] <= s["warningMinPosition"] <= s["safeMinPosition"] <= 0
    status = asyncio.run(get("/api/status"))
    assert status["liveSessions"] == 0 and status["models"][0]["provider"]
    with pytest.raises(AssertionError, match="NOT_FOUND"):
        asyncio.run(get("/api/info?model=nope"))


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_a_clip_downloads_with_its_exact_length_and_tags(web: WebServer, fmt: str) -> None:
    container = {"wav": "CONTAINER_WAV", "flac": "CONTAINER_FLAC", "ogg": "CONTAINER_OGG"}[fmt]
    encoding = {"wav": "AUDIO_ENCODING_PCM16", "flac": "AUDIO_ENCODING_FLAC"}.get(
        fmt, "AUDIO_ENCODING_OPUS"
    )
    body = {"spec": {**SPEC, "durationS": 1.25, "encoding": encoding}, "container": container}

    async def post() -> tuple[bytes, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{web.url}/api/generate", data=json.dumps(body)) as r,
        ):
            assert r.status == 200, await r.text()
            return await r.read(), r.headers

    data, headers = asyncio.run(post())
    assert headers["Content-Disposition"].endswith(f'-seed3.{fmt}"')
    audio, rate = sf.read(io.BytesIO(data))
    assert rate == 48000 and len(audio) == 60000
    assert np.abs(audio).max() > 0.01
    tags = json.loads(headers["X-Distill-Format"])["tags"]
    assert tags["distill_seed"] == "3"


def test_a_bad_generate_request_is_400_and_says_why(web: WebServer) -> None:
    async def post(data: bytes) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{web.url}/api/generate", data=data) as r,
        ):
            text = await r.text()
            return r.status, json.loads(text) if r.content_type == "application/json" else text

    status, body = asyncio.run(post(b'{"spec": {"durationS": 1, "nope": 2}}'))
    assert status == 400 and 'no field named "nope"' in body["error"]["message"]
    status, body = asyncio.run(post(json.dumps({"spec": {**SPEC, "durationS": 600}}).encode()))
    assert status == 400 and "duration" in body["error"]["message"]
    status, body = asyncio.run(post(b"x" * 100_000))  # over the body limit
    assert status == 413, body


def test_stopping_the_server_ends_web_sessions_with_going_away(engine: Engine) -> None:
    web = WebServer(engine)
    stopper = threading.Timer(1.0, web.stop)  # after the session's first audio

    async def session() -> Socket:
        stopper.start()
        return await _talk(web.ws_url, [START])

    try:
        started = time.monotonic()
        seen = asyncio.run(asyncio.wait_for(session(), 60))
        assert seen.close_code == 1001 and seen.frames, seen.texts
        assert time.monotonic() - started < 20
    finally:
        stopper.join()
    assert web.live_sessions() == 0
