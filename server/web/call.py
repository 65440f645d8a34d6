"""One web request as the servicer sees a gRPC call: the part of ``grpc.aio.ServicerContext``
the servicer, admission and live loop use (metadata, peer, abort, write, done), so an HTTP
request or a WebSocket runs the very code a gRPC call runs and gets the same admission,
limits, metrics and audio.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn, cast

import grpc
import grpc.aio
from aiohttp import web
from google.protobuf.message import Message

Writer = Callable[[Message], Awaitable[None]]


class WebCall:
    """A call's context: the ``authorization`` header it came with, where it came from, and
    (a WebSocket) where its messages go. ``abort`` records the status and ends the handler
    the way grpc.aio's does (:class:`grpc.aio.AbortError`)."""

    def __init__(self, authorization: str, peer: str, writer: Writer | None = None) -> None:
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", authorization),) if authorization else ()
        )
        self._peer = peer
        self._writer = writer
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.retry_after_ms: int | None = None
        #: the client has gone (its socket closed): nothing more can reach it
        self.gone = False

    # --- the ServicerContext subset -------------------------------------------------------
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None  # web calls carry no deadline

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        for key, value in metadata:
            if key == "retry-after-ms":
                self.retry_after_ms = int(value)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        self.code, self.details = code, details
        raise grpc.aio.AbortError(details)

    async def write(self, message: Message) -> None:
        if self._writer is None:
            raise RuntimeError("this call answers once; it has no stream to write to")
        await self._writer(message)

    def done(self) -> bool:
        return self.gone

    @property
    def context(self) -> grpc.aio.ServicerContext:
        """This call typed as the servicer's context (it has what the servicer uses)."""
        return cast(grpc.aio.ServicerContext, self)


def peer_of(request: web.Request) -> str:
    """The request's remote address in grpc's peer form (``ipv4:1.2.3.4:5``,
    ``ipv6:[::1]:5``), which admission's per-client fairness reads."""
    address = request.transport.get_extra_info("peername") if request.transport else None
    if not address:
        return "unknown"
    host, port = address[0], address[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
