"""The web edge's HTTP routes: login, model list and info, fixed-length generation as a
file download, model control (admin tokens) and the server's state for the playground. Each
runs the gRPC servicer's method of the same name, so it is admitted, limited and counted
the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from google.protobuf.message import Message

from distill_serve.server.api.server import DistillServer
from distill_serve.server.pipeline.request import InvalidRequest
from distill_serve.server.web.auth import COOKIE, WebAuth
from distill_serve.server.web.call import WebCall, peer_of
from distill_serve.server.web.protocol import HTTP_STATUS, as_dict, error_json, parse
from distill_serve.v1 import distill_pb2 as pb

Method = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]]

#: What a downloaded file is, by container.
FILE_TYPES = {
    pb.CONTAINER_WAV: ("audio/wav", "wav"),
    pb.CONTAINER_FLAC: ("audio/flac", "flac"),
    pb.CONTAINER_OGG: ("audio/ogg", "ogg"),
}


def refusal(code: grpc.StatusCode, message: str, retry_after_ms: int | None = None) -> web.Response:
    """An HTTP error with the JSON error body (and ``Retry-After`` for RESOURCE_EXHAUSTED)."""
    headers = {}
    if retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, round(retry_after_ms / 1000)))
    return web.Response(
        status=HTTP_STATUS.get(code, 500),
        text=error_json(code, message, retry_after_ms),
        content_type="application/json",
        headers=headers,
    )


class HttpRoutes:
    """The HTTP side of the edge over ``server``'s servicer."""

    def __init__(self, server: DistillServer, auth: WebAuth) -> None:
        self._server = server
        self._auth = auth

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/api/login", self.login)
        app.router.add_post("/api/logout", self.logout)
        app.router.add_get("/api/models", self.models)
        app.router.add_get("/api/info", self.info)
        app.router.add_post("/api/generate", self.generate)
        app.router.add_post("/api/models/{name}/load", self.load)
        app.router.add_post("/api/models/{name}/unload", self.unload)
        app.router.add_get("/api/status", self.status)

    async def _unary(
        self, request: web.Request, rpc: str, message: Message
    ) -> Message | web.Response:
        """Run ``rpc`` on the servicer as this request's call; its reply, or the refusal."""
        refused = self._auth.refusal(request, rpc)
        if refused is not None:
            return refusal(*refused)
        call = WebCall(self._auth.authorization(request), peer_of(request))
        method: Method = getattr(self._server.servicer, rpc)
        try:
            return await method(message, call.context)
        except grpc.aio.AbortError:
            assert call.code is not None
            return refusal(call.code, call.details, call.retry_after_ms)

    async def _json(self, request: web.Request, rpc: str, message: Message) -> web.Response:
        """Run ``rpc`` (:meth:`_unary`) and answer its reply in protobuf's JSON mapping."""
        reply = await self._unary(request, rpc, message)
        return reply if isinstance(reply, web.Response) else web.json_response(as_dict(reply))

    async def login(self, request: web.Request) -> web.Response:
        """``{"token": ...}`` -> an HttpOnly, SameSite=Strict cookie the page's calls carry."""
        try:
            token = str(json.loads(await request.text())["token"])
        except (ValueError, KeyError, TypeError):
            return refusal(grpc.StatusCode.INVALID_ARGUMENT, 'send {"token": "<token>"}')
        if not self._auth.tokens.known_tokens():
            return web.json_response({"login": "this server needs no token"})
        if not self._auth.valid_token(token):
            return refusal(grpc.StatusCode.UNAUTHENTICATED, "that token is not accepted here")
        response = web.json_response({"login": "ok"})
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="Strict", secure=self._auth.secure, path="/"
        )
        return response

    async def logout(self, request: web.Request) -> web.Response:
        response = web.json_response({"logout": "ok"})
        response.del_cookie(COOKIE, path="/")
        return response

    async def models(self, request: web.Request) -> web.Response:
        return await self._json(request, "ListModels", pb.ListModelsRequest())

    async def info(self, request: web.Request) -> web.Response:
        message = pb.GetModelInfoRequest(model=request.query.get("model", ""))
        return await self._json(request, "GetModelInfo", message)

    async def generate(self, request: web.Request) -> web.Response:
        """A ``GenerateRequest`` (JSON body) -> the audio file, as a download."""
        try:
            message = parse(await request.read(), pb.GenerateRequest, "request")
        except InvalidRequest as exc:
            return refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        reply = await self._unary(request, "Generate", message)
        if isinstance(reply, web.Response):
            return reply
        assert isinstance(reply, pb.GenerateResponse)
        content_type, ext = FILE_TYPES.get(
            reply.format.container, ("application/octet-stream", "raw")
        )
        model = re.sub(r"[^A-Za-z0-9_.-]", "_", message.spec.model or "distill")
        name = f"{model}-seed{reply.seed}.{ext}"
        return web.Response(
            body=reply.audio,
            content_type=content_type,
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "X-Distill-Seed": str(reply.seed),
                "X-Distill-Format": json.dumps(as_dict(reply.format), separators=(",", ":")),
            },
        )

    async def load(self, request: web.Request) -> web.Response:
        message = pb.LoadModelRequest(name=request.match_info["name"])
        return await self._json(request, "LoadModel", message)

    async def unload(self, request: web.Request) -> web.Response:
        message = pb.UnloadModelRequest(name=request.match_info["name"])
        return await self._json(request, "UnloadModel", message)

    async def status(self, request: web.Request) -> web.Response:
        """What the playground shows of the server: its models, their vocoder and provider,
        the live sessions running and the live capacity."""
        refused = self._auth.refusal(request, "ListModels")
        if refused is not None:
            return refusal(*refused)
        server = self._server
        models = []
        for entry in server.models.entries():
            engine = entry.engine
            models.append(
                {
                    "name": entry.name,
                    "state": entry.state.value,
                    "version": entry.version,
                    "provider": engine.primary_provider if engine else "",
                    "vocoder": str(engine.bundle.manifest["vocoder"].get("family", ""))
                    if engine
                    else "",
                    "vocoderPath": engine.vocoder_path if engine else "",
                    "liveCapacity": engine.live_capacity if engine else 0,
                }
            )
        return web.json_response(
            {
                "models": models,
                "defaultModel": server.models.default_name,
                "liveSessions": round(live_sessions(server)),
                "generations": server.models.in_flight,
                "grpcPort": server.port,
            }
        )


def live_sessions(server: DistillServer) -> float:
    """Live sessions running now (the active-generations gauge, GenerateLive series)."""
    return sum(
        sample.value
        for family in server.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "distill_active_generations"
        and sample.labels.get("rpc") == "GenerateLive"
    )
