"""grpc.aio's servicer context as the servicer uses it, on Ray Serve's gRPC context."""

from __future__ import annotations

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
