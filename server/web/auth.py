"""Who may use the web edge: the gRPC server's bearer tokens and scopes (the same
``BearerTokenInterceptor`` decides), given as a header, a WebSocket subprotocol or the cookie
the login step sets (never in a URL, which logs keep); and which web pages may call it
(``--allowed-origins``: cross-site WebSocket hijacking is refused by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from aiohttp import web

from distill_serve.server.api.interceptors import BearerTokenInterceptor, token_valid
from distill_serve.server.web.protocol import TOKEN_PROTOCOL_PREFIX

COOKIE = "distill_token"
SERVICE = "/distill_serve.v1.DistillService/"

UNAUTHENTICATED = (
    'missing or invalid bearer token: log in (POST /api/login with {"token": ...}), or send '
    "'Authorization: Bearer <token>' (WebSocket: the subprotocol 'bearer.<token>')"
)


@dataclass(frozen=True)
class WebAuth:
    """The edge's checks: tokens (``tokens`` is the gRPC server's interceptor) and origins.

    Attributes:
        tokens: the gRPC server's token check, asked with the gRPC method a route stands for.
        allowed_origins: web origins besides the edge's own that may call it (``*``: any).
        secure: the edge serves TLS (the login cookie is then ``Secure``).
    """

    tokens: BearerTokenInterceptor
    allowed_origins: tuple[str, ...] = ()
    secure: bool = False

    def authorization(self, request: web.Request) -> str:
        """The request's ``authorization`` value: its header, else a ``bearer.<token>``
        subprotocol, else the login cookie ("" when none)."""
        header = request.headers.get("Authorization", "")
        if header:
            return header
        for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            offered = offered.strip()
            if offered.startswith(TOKEN_PROTOCOL_PREFIX):
                return "Bearer " + offered[len(TOKEN_PROTOCOL_PREFIX) :]
        cookie = request.cookies.get(COOKIE, "")
        return f"Bearer {cookie}" if cookie else ""

    def refusal(self, request: web.Request, rpc: str) -> tuple[grpc.StatusCode, str] | None:
        """Why ``request`` may not call ``rpc`` (a DistillService method name), or None."""
        refused = self.tokens.refusal(self.authorization(request), SERVICE + rpc)
        if refused is not None and refused[0] is grpc.StatusCode.UNAUTHENTICATED:
            return refused[0], UNAUTHENTICATED
        return refused

    def valid_token(self, token: str) -> bool:
        """Whether ``token`` is one the server accepts (generation or admin)."""
        return token_valid(f"Bearer {token}", self.tokens.known_tokens())

    def origin_allowed(self, request: web.Request) -> bool:
        """A request from no page (no ``Origin``: curl, a game), from the edge's own pages,
        or from an origin ``--allowed-origins`` names."""
        origin = request.headers.get("Origin")
        if origin is None or "*" in self.allowed_origins:
            return True
        return origin == own_origin(request) or origin in self.allowed_origins

    def foreign(self, request: web.Request) -> str | None:
        """The request's origin when it is another site's that may call (CORS applies)."""
        origin = request.headers.get("Origin")
        if origin is None or origin == own_origin(request):
            return None
        return origin if self.origin_allowed(request) else None


def own_origin(request: web.Request) -> str:
    """The origin of the edge's own pages, as a browser names it in ``Origin``."""
    return f"{request.scheme}://{request.host}"
