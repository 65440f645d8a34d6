"""grpc.aio's servicer context as the servicer uses it, on Ray Serve's gRPC context."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc


class Aborted(Exception):
    """Raised by :meth:`ServeContext.abort` after the status is set on Serve's context.

    A unary method catches it and returns (Serve sends the status set on the context); a
    streaming method lets it propagate, since Serve's proxy ignores the context's status when
    a stream ends normally, but keeps it when the stream raises.
    """


class ServeContext:
    """grpc.aio's ``ServicerContext`` as the servicer uses it, on Serve's context."""

    def __init__(self, grpc_context: Any) -> None:
        self._ctx = grpc_context
        self._outbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=2)

    async def write(self, message: Any) -> None:
        """A handler's write: waits while the stream's reader (:meth:`stream`) is behind."""
        await self._outbox.put(message)

    async def stream(self, handler: Coroutine[Any, Any, None]) -> AsyncIterator[Any]:
        """The messages ``handler`` (a servicer method that writes through this context)
        writes, as the async generator Serve's proxy reads; its exception, if any, last."""
        task = asyncio.ensure_future(handler)
        try:
            while True:
                get = asyncio.ensure_future(self._outbox.get())
                await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    yield get.result()
                    continue
                get.cancel()
                while not self._outbox.empty():
                    yield self._outbox.get_nowait()
                await task  # its exception (an abort) ends the stream
                return
        finally:
            task.cancel()

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self._ctx.set_code(code)
        self._ctx.set_details(details)
        raise Aborted(details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._ctx.set_trailing_metadata(list(metadata))  # Serve concatenates lists

    def invocation_metadata(self) -> Any:
        return self._ctx.invocation_metadata()

    def peer(self) -> str:
        """Serve's proxy does not pass the client's address on: clients with no token are
        one client to the admission queue's fairness (its order still holds)."""
        return ""

    def time_remaining(self) -> float | None:
        return None
