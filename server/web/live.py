"""A live session over WebSocket (``GET /v1/live``): the gRPC ``GenerateLive`` loop itself,
fed the socket's JSON messages and writing its events back (JSON text; audio as binary
frames, protocol.py). A closed socket ends the session at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import grpc.aio
from aiohttp import WSMsgType, web
from google.protobuf.message import Message

from distill_serve.server.api.servicer import DistillServicer
from distill_serve.server.pipeline.request import InvalidRequest
from distill_serve.server.web.auth import WebAuth
from distill_serve.server.web.call import WebCall, peer_of
from distill_serve.server.web.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    MAX_CLIENT_MESSAGE,
    SUBPROTOCOL,
    as_json,
    audio_frame,
    close_code,
    close_reason,
    error_json,
    parse,
)
from distill_serve.v1 import distill_pb2 as pb

log = logging.getLogger(__name__)


class LiveSocket:
    """Serves ``/v1/live`` with the gRPC servicer's live RPC."""

    def __init__(self, servicer: DistillServicer, auth: WebAuth) -> None:
        self._servicer = servicer
        self._auth = auth
        self._sessions: set[_Session] = set()

    async def close_all(self, app: web.Application | None = None) -> None:
        """End the sessions still running (the edge is stopping, after the server's drain):
        each client gets 1001 (going away)."""
        for session in list(self._sessions):
            await session.end(CLOSE_GOING_AWAY, "the server is shutting down")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,), max_msg_size=MAX_CLIENT_MESSAGE, compress=False
        )
        await ws.prepare(request)
        if ws.ws_protocol != SUBPROTOCOL:
            await _refuse(
                ws, grpc.StatusCode.INVALID_ARGUMENT, f"offer the subprotocol {SUBPROTOCOL}"
            )
            return ws
        refused = self._auth.refusal(request, "GenerateLive")
        if refused is not None:
            await _refuse(ws, *refused)
            return ws
        session = _Session(ws, self._auth.authorization(request), peer_of(request))
        self._sessions.add(session)
        try:
            await session.run(self._servicer)
        finally:
            self._sessions.discard(session)
        return ws


class _Session:
    """One socket's session: the servicer's ``GenerateLive`` in a task of its own, which the
    socket's closing cancels."""

    def __init__(self, ws: web.WebSocketResponse, authorization: str, peer: str) -> None:
        self._ws = ws
        self._timeline = False
        self._task: asyncio.Task[None] | None = None
        self.call = WebCall(authorization, peer, self._write)

    async def run(self, servicer: DistillServicer) -> None:
        ws, call = self._ws, self.call
        self._task = asyncio.create_task(servicer.GenerateLive(self._requests(), call.context))
        try:
            await asyncio.wait({self._task})
        finally:  # the edge's own shutdown cancels this handler: end the session with it
            self._task.cancel()
        if self._task.cancelled() or call.gone:
            return  # the socket closed first: nobody to tell
        error = self._task.exception()
        if isinstance(error, grpc.aio.AbortError) and call.code is not None:
            await _refuse(ws, call.code, call.details, call.retry_after_ms)
        elif error is not None:
            log.error("live session over WebSocket failed", exc_info=error)
            await _refuse(ws, grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
        else:
            await ws.close(code=CLOSE_NORMAL)

    def _gone(self) -> None:
        """The client can no longer hear the session: end it at once."""
        self.call.gone = True
        if self._task is not None:
            self._task.cancel()

    async def end(self, code: int, reason: str) -> None:
        """End the session now and close the socket with ``code``."""
        self._gone()
        if not self._ws.closed:
            await self._ws.close(code=code, message=reason.encode())

    async def _requests(self) -> AsyncIterator[pb.GenerateLiveRequest]:
        """The socket's messages as requests, until it closes; then the session is ended."""
        async for msg in self._ws:
            if msg.type is WSMsgType.TEXT:
                request = parse(msg.data, pb.GenerateLiveRequest, "request")
                if request.WhichOneof("kind") == "start":
                    self._timeline = request.start.HasField("start_position")
                yield request
            elif msg.type is WSMsgType.BINARY:
                raise InvalidRequest(
                    "request", "send JSON text messages; binary frames carry audio, from the server"
                )
            else:  # an error (a message over the size limit): the socket is closing
                break
        self._gone()

    async def _write(self, message: Message) -> None:
        assert isinstance(message, pb.GenerateLiveResponse)
        if self._ws.closed:
            self.call.gone = True
            raise ConnectionResetError("the WebSocket has closed")
        if message.WhichOneof("event") == "audio":
            await self._ws.send_bytes(audio_frame(message.audio, self._timeline))
        else:
            await self._ws.send_str(as_json(message))


async def _refuse(
    ws: web.WebSocketResponse,
    code: grpc.StatusCode,
    message: str,
    retry_after_ms: int | None = None,
) -> None:
    """Say why in a JSON error, then close with 4000 + the status code."""
    if ws.closed:
        return
    try:
        await ws.send_str(error_json(code, message, retry_after_ms))
        await ws.close(code=close_code(code), message=close_reason(message).encode())
    except (ConnectionError, RuntimeError):
        pass  # the client went first
