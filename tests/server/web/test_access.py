"""Who may use the web edge: the gRPC server's tokens and scopes (header, subprotocol or the
login cookie, never the URL), its TLS certificate, and only its own pages unless
``--allowed-origins`` names others."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from distill_serve.server.engine.engine import Engine
from tests.certs import make_pki
from tests.server.web.conftest import WebServer
from tests.server.web.test_protocol import START, STOP, _talk

TOKEN = "gen-token-1"
ADMIN = "admin-token-1"


@pytest.fixture(scope="module")
def guarded(engine: Engine) -> Iterator[WebServer]:
    server = WebServer(
        engine,
        auth_tokens=(TOKEN,),
        admin_tokens=(ADMIN,),
        allowed_origins=("https://game.example",),
    )
    yield server
    server.stop()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def status_of(
    method: str, url: str, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, dict[str, Any], Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, **kw) as r,
    ):
        text = await r.text()
        body = json.loads(text) if r.content_type == "application/json" else text
        return r.status, dict(r.headers), body


def test_http_calls_need_a_token(guarded: WebServer) -> None:
    status, _, body = run(status_of("GET", guarded.url + "/api/models"))
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED"
    assert "POST /api/login" in body["error"]["message"]
    wrong = {"Authorization": "Bearer nope"}
    assert run(status_of("GET", guarded.url + "/api/models", wrong))[0] == 401
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert run(status_of("GET", guarded.url + "/api/models", right))[0] == 200
    # the page needs no token: it asks for one
    assert run(status_of("GET", guarded.url + "/"))[0] == 200


def test_the_login_cookie_is_httponly_and_strict(guarded: WebServer) -> None:
    async def flow() -> tuple[int, int, str, int]:
        # unsafe: the jar keeps cookies of IP-address hosts (127.0.0.1)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(guarded.url + "/api/login", data=json.dumps({"token": "x"})) as r:
                refused = r.status
            async with http.post(
                guarded.url + "/api/login", data=json.dumps({"token": TOKEN})
            ) as r:
                cookie = r.headers["Set-Cookie"]
            async with http.get(guarded.url + "/api/models") as r:  # the jar sends the cookie
                models = r.status
            return refused, r.status, cookie, models

    refused, _, cookie, models = run(flow())
    assert refused == 401
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert models == 200


def test_a_live_session_needs_a_token_given_as_a_subprotocol(guarded: WebServer) -> None:
    seen = run(_talk(guarded.ws_url, [START]))
    assert seen.close_code == 4016 and seen.error["code"] == "UNAUTHENTICATED"
    seen = run(_talk(guarded.ws_url, [START], protocols=("distill.v1", "bearer.wrong")))
    assert seen.close_code == 4016
    seen = run(
        _talk(
            guarded.ws_url,
            [START],
            blocks=2,
            then=[STOP],
            protocols=("distill.v1", f"bearer.{TOKEN}"),
        )
    )
    assert len(seen.frames) >= 2 and seen.close_code == 1000


def test_model_control_needs_an_admin_token(guarded: WebServer) -> None:
    url = f"{guarded.url}/api/models/nope/load"
    status, _, body = run(status_of("POST", url, {"Authorization": f"Bearer {TOKEN}"}))
    assert status == 403 and "admin token" in body["error"]["message"]
    status, _, body = run(status_of("POST", url, {"Authorization": f"Bearer {ADMIN}"}))
    assert status == 404, body  # allowed; the model does not exist


def test_foreign_origins_are_refused_unless_allowed(guarded: WebServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    evil = {**auth, "Origin": "https://evil.example"}
    status, _, body = run(status_of("GET", guarded.url + "/api/models", evil))
    assert status == 403 and "--allowed-origins" in body["error"]["message"]
    # a cross-site WebSocket (hijacking with the victim's cookie) fails its handshake
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        run(_talk(guarded.ws_url, [START], headers={"Origin": "https://evil.example"}))
    assert refused.value.status == 403
    # an allowed origin gets CORS headers, its preflight an answer
    game = {**auth, "Origin": "https://game.example"}
    status, headers, _ = run(status_of("GET", guarded.url + "/api/models", game))
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://game.example"
    preflight = {"Origin": "https://game.example", "Access-Control-Request-Method": "POST"}
    status, headers, _ = run(status_of("OPTIONS", guarded.url + "/api/generate", preflight))
    assert status == 204 and "authorization" in headers["Access-Control-Allow-Headers"]
    # the edge's own pages are same-origin
    own = {**auth, "Origin": guarded.url}
    assert run(status_of("GET", guarded.url + "/api/models", own))[0] == 200


def test_tls_serves_https_and_wss_with_the_grpc_certificate(engine: Engine, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = WebServer(engine, tls_cert=pki.server_cert, tls_key=pki.server_key)
    try:
        context = ssl.create_default_context(cafile=str(pki.ca))

        async def flow() -> tuple[int, int]:
            async with aiohttp.ClientSession() as http:
                async with http.get(server.url + "/api/models", ssl=context) as r:
                    status = r.status
                async with http.ws_connect(
                    server.ws_url, protocols=("distill.v1",), ssl=context
                ) as ws:
                    await ws.send_str(json.dumps(START))
                    frames = 0
                    async for msg in ws:
                        if msg.type is aiohttp.WSMsgType.BINARY:
                            frames += 1
                            if frames == 2:
                                await ws.send_str(json.dumps(STOP))
                return status, frames

        status, frames = run(flow())
        assert server.url.startswith("https://") and status == 200 and frames >= 2
        with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
            run(status_of("GET", server.url.replace("https", "http") + "/api/models"))
    finally:
        server.stop()
