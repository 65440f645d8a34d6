"""A server with its web edge (``serve --http-port``), in this process: the gRPC server's
loop thread runs both."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from distill_serve.server.api.config import ServerConfig
from distill_serve.server.engine.engine import Engine
from distill_serve.server.pipeline.request import Limits
from distill_serve.server.web.edge import WebEdge
from tests.conftest import ServerThread


class WebServer(ServerThread):
    """A :class:`ServerThread` with a :class:`WebEdge` on 127.0.0.1:<free port>."""

    def __init__(self, engine: Engine, limits: dict[str, Any] | None = None, **config: Any) -> None:
        limits = {"max_concurrent": 4, "max_duration_s": 60.0, **(limits or {})}
        super().__init__(
            ServerConfig(port=0, http_port=0, limits=replace(Limits(), **limits), **config), engine
        )

        async def start() -> WebEdge:
            edge = WebEdge(self.server)
            await self.server.add_edge(edge)
            return edge

        self.edge: WebEdge = self.call(start())
        scheme = "https" if config.get("tls_cert") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.edge.port}"
        self.ws_url = self.url.replace("http", "ws", 1) + "/v1/live"

    def live_sessions(self) -> float:
        return self.metric("distill_active_generations", {"rpc": "GenerateLive"})


@pytest.fixture(scope="module")
def web(engine: Engine) -> Iterator[WebServer]:
    server = WebServer(engine)
    yield server
    server.stop()
