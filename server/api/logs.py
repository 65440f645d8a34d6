"""Error logs that a flood cannot turn into a flood of tracebacks.

A handler error logs its traceback the first few times in a window; further records of the
same message in that window are dropped and counted, and the next one logged after the
window says how many were left out. Installed on grpc's handler-error logger and on the
servicer's own error logs by :func:`limit_error_logs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

#: grpc.aio logs a handler's unexpected exception, with its traceback, here.
GRPC_HANDLER_LOGGER = "grpc._cython.cygrpc"
#: The loggers that log a traceback per failed request: grpc's and the server's own.
ERROR_LOGGERS = (
    GRPC_HANDLER_LOGGER,
    "distill_serve.server.api.servicer",
    "distill_serve.server.api.live_rpc",
    "distill_serve.server.engine.scheduler",
)


class RateLimitedErrors(logging.Filter):
    """Lets through at most ``burst`` ERROR-or-worse records per message per ``window_s``;
    the rest are counted and reported on the next record that passes."""

    def __init__(
        self,
        burst: int = 5,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._burst, self._window, self._clock = burst, window_s, clock
        self._seen: dict[str, tuple[float, int, int]] = {}  # msg -> (start, passed, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        key = f"{record.name}:{record.msg}"
        now = self._clock()
        start, passed, dropped = self._seen.get(key, (now, 0, 0))
        if now - start >= self._window:
            start, passed = now, 0
        if passed >= self._burst:
            self._seen[key] = (start, passed, dropped + 1)
            return False
        if dropped:
            record.msg = f"{record.msg} ({dropped} more like it left out of the log)"
        self._seen[key] = (start, passed + 1, 0)
        return True


def limit_error_logs(names: Iterable[str], burst: int = 5, window_s: float = 60.0) -> None:
    """Put one :class:`RateLimitedErrors` on each named logger (once per logger)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitedErrors) for f in logger.filters):
            logger.addFilter(RateLimitedErrors(burst, window_s))
