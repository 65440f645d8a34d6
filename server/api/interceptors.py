"""Server interceptors: bearer-token auth, and clean statuses for unparsable requests.

Both wrap the method handler that grpc would run (handlers are namedtuples, so
``_replace`` swaps their functions) and never touch the servicer.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from distill_serve.server.pipeline.request import InvalidRequest

#: RPCs anyone may call: health checks stay open for load balancers and orchestrators.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


class _Malformed:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: str) -> None:
        self.error = error


def _deny(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same shape as ``handler`` that ends the call with ``code``."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_unary:
        return handler._replace(unary_unary=unary)
    if handler.unary_stream:
        return handler._replace(unary_stream=stream)
    if handler.stream_unary:
        return handler._replace(stream_unary=unary)
    return handler._replace(stream_stream=stream)


def token_valid(header: str, tokens: Sequence[bytes]) -> bool:
    """Whether ``authorization`` header ``Bearer <token>`` names one of ``tokens`` (compared
    in constant time)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode()
    return any(hmac.compare_digest(given, t) for t in tokens)


#: RPCs that change what the server serves: admin tokens only (``--admin-token-file``).
ADMIN_METHODS = (
    "/distill_serve.v1.DistillService/LoadModel",
    "/distill_serve.v1.DistillService/UnloadModel",
)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Token scopes: ``authorization: Bearer <token>``.

    - health checks are open;
    - model control (:data:`ADMIN_METHODS`) needs an admin token: PERMISSION_DENIED for a
      generation token or when the server has no admin tokens, UNAUTHENTICATED for none;
    - every other RPC needs a generation or admin token when the server has generation
      tokens (UNAUTHENTICATED otherwise), and is open when it has none.

    Tokens are compared in constant time.
    """

    def __init__(self, tokens: Sequence[str], admin_tokens: Sequence[str] = ()) -> None:
        if any(not t for t in (*tokens, *admin_tokens)):
            raise ValueError("tokens must not be empty")
        self._tokens = [t.encode() for t in tokens]
        self._admin = [t.encode() for t in admin_tokens]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        given = [
            str(v)
            for k, v in handler_call_details.invocation_metadata or ()
            if k == "authorization"
        ]
        if len(given) > 1:
            return _deny(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "send one authorization header, not several",
            )
        refused = self.refusal(given[0] if given else "", method)
        return handler if refused is None else _deny(handler, *refused)

    def known_tokens(self) -> list[bytes]:
        """Every token this server accepts (generation and admin)."""
        return [*self._tokens, *self._admin]

    def refusal(self, header: str, method: str) -> tuple[grpc.StatusCode, str] | None:
        """Why a call to ``method`` with ``authorization`` header ``header`` is refused (its
        status and message), or None when it may go on. The web edge asks the same."""
        admin = bool(self._admin) and token_valid(header, self._admin)
        if method in ADMIN_METHODS:
            if admin:
                return None
            if not self._admin:
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "model control is off on this server: start it with --admin-token-file "
                    "and call with one of those tokens (or rescan with SIGHUP)",
                )
            if self._tokens and token_valid(header, self._tokens):
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    "this token may generate but not load or unload models: use an admin token",
                )
        elif not self._tokens or admin or token_valid(header, self._tokens):
            return None
        return (
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'",
        )


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Bytes that do not parse as the request message get INVALID_ARGUMENT (grpc's own
    answer would be INTERNAL)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler: Any = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        if handler.request_streaming and not handler.stream_stream:
            return handler
        parse = handler.request_deserializer

        def lenient(data: bytes) -> Any:
            try:
                return parse(data)
            except (DecodeError, ValueError, TypeError) as exc:
                return _Malformed(str(exc) or type(exc).__name__)

        message = "request is not a valid protobuf message for this RPC"

        async def refuse_malformed(request: Any, context: grpc.aio.ServicerContext) -> None:
            if isinstance(request, _Malformed):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{message} ({request.error})"
                )

        if handler.stream_stream:
            # A bidirectional handler reads its requests from an iterator: a message that
            # did not parse raises InvalidRequest there, which the servicer reports as
            # INVALID_ARGUMENT (with the stream's other errors).
            inner_bidi = handler.stream_stream

            async def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
                async for request in requests:
                    if isinstance(request, _Malformed):
                        raise InvalidRequest("request", f"{message} ({request.error})")
                    yield request

            async def bidi(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await inner_bidi(checked(requests), context)

            async def bidi_gen(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                async for reply in inner_bidi(checked(requests), context):
                    yield reply

            # grpc.aio runs a bidirectional handler as a coroutine (writes through the
            # context) or as an async generator (reflection's); keep the handler's kind.
            wrapped = bidi_gen if inspect.isasyncgenfunction(inner_bidi) else bidi
            return handler._replace(request_deserializer=lenient, stream_stream=wrapped)
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await refuse_malformed(request, context)
                return await inner(request, context)

            return handler._replace(request_deserializer=lenient, unary_unary=unary)
        inner_stream = handler.unary_stream

        async def stream_gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse_malformed(request, context)
            async for item in inner_stream(request, context):
                yield item

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse_malformed(request, context)
            return await inner_stream(request, context)

        # As for bidirectional handlers: an async generator, or a coroutine that writes
        # through the context (grpcio-health-checking's Watch).
        wrapped_stream = stream_gen if inspect.isasyncgenfunction(inner_stream) else stream
        return handler._replace(request_deserializer=lenient, unary_stream=wrapped_stream)
