"""The web edge's server (``serve --http-port``): an aiohttp application beside the gRPC
server, on its event loop and over its servicer; TLS with the gRPC server's certificate;
origins checked before anything else runs.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from importlib.util import find_spec
from pathlib import Path

import grpc
from aiohttp import web

from distill_serve.server.api.config import ServerConfig
from distill_serve.server.api.server import DistillServer
from distill_serve.server.web.auth import WebAuth
from distill_serve.server.web.live import LiveSocket
from distill_serve.server.web.routes import HttpRoutes, refusal

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: How long stopping waits for HTTP requests still running (after the server's drain).
SHUTDOWN_S = 2.0
#: Largest HTTP body (a GenerateRequest): 64 KiB.
MAX_BODY = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client_dir() -> Path:
    """The JavaScript client's folder (``client/web``), which the page imports; found
    without importing the Python client."""
    spec = find_spec("distill_serve.client")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the distill_serve.client package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "web"


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The gRPC server's certificate (and client CA) for HTTPS, or None for plain HTTP."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca is not None:
        context.load_verify_locations(config.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def build_app(server: DistillServer, auth: WebAuth) -> web.Application:
    """The application: the page at ``/``, its files, the client, the API and the socket."""

    @web.middleware
    async def origins(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not auth.origin_allowed(request):
            origin = request.headers.get("Origin", "")
            return refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"pages from {origin} may not call this server: start it with "
                f"--allowed-origins {origin} to allow them",
            )
        foreign = auth.foreign(request)
        if request.method == "OPTIONS" and foreign is not None:  # a CORS preflight
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            response.headers["Access-Control-Allow-Headers"] = "authorization, content-type"
        else:
            response = await handler(request)
        if foreign is not None and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = foreign
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        return response

    @web.middleware
    async def no_sniff(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not response.prepared:
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    app = web.Application(middlewares=[origins, no_sniff], client_max_size=MAX_BODY)
    HttpRoutes(server, auth).add_to(app)
    live = LiveSocket(server.servicer, auth)
    app.router.add_get("/v1/live", live.handle)
    app.on_shutdown.append(live.close_all)

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    app.router.add_get("/", page)
    app.router.add_static("/static/", STATIC)
    app.router.add_static("/client/", client_dir())
    return app


class WebEdge:
    """``server``'s service over HTTP and WebSocket on ``config.http_port``."""

    def __init__(self, server: DistillServer) -> None:
        config = server.config
        if config.http_port is None:
            raise ValueError("the web edge needs --http-port")
        self._config = config
        self._tls = tls_context(config)
        self.auth = WebAuth(server.auth, config.allowed_origins, secure=self._tls is not None)
        self._runner = web.AppRunner(
            build_app(server, self.auth), access_log=None, shutdown_timeout=SHUTDOWN_S
        )
        self.port = 0

    async def start(self) -> str:
        """Listen; the line that says where (the playground's address)."""
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self._config.host,
            self._config.http_port,
            ssl_context=self._tls,
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        scheme = "https" if self._tls else "http"
        return f"web edge on {scheme}://{self._config.host}:{self.port}/ (the playground)"

    async def stop(self) -> None:
        """Close the sockets still open (1001 going away) and stop listening."""
        await self._runner.cleanup()
