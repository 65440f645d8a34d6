"""The send budget: a stream or live session whose client does not read its audio at least
as fast as real time is ended, and its slot freed.

Flow control makes a write wait while the client's receive window is full, so a client that
stops reading would otherwise hold its generation slot (and the memory of what is queued)
for as long as it likes. Only time spent waiting on writes counts against the client, never
the server's own time to generate: the client earns the audio it accepts and spends the time
its writes wait, and the call ends once it owes more than ``margin_s``. A client that reads
as the audio plays never runs out (its writes wait about as long as the audio they carry
lasts); one that stops reading is ended ``margin_s`` plus the audio it had accepted later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import grpc

from distill_serve.server.api.admission import Abort


@dataclass
class SendBudget:
    """Credit of one call: ``margin_s`` + seconds of audio accepted - seconds writes waited."""

    margin_s: float
    #: a single write may wait no longer than this however much credit there is (None: no cap)
    write_cap_s: float | None = None
    accepted_s: float = 0.0
    waited_s: float = 0.0

    @property
    def credit_s(self) -> float:
        return self.margin_s + self.accepted_s - self.waited_s

    async def send(
        self, context: grpc.aio.ServicerContext, message: object, audio_s: float = 0.0
    ) -> None:
        """Write ``message`` (carrying ``audio_s`` seconds of audio) to the call within the
        budget (:meth:`write`)."""
        await self.write(context.write(message), audio_s)

    async def write(self, write: Awaitable[None], audio_s: float) -> None:
        """Await ``write`` (one message carrying ``audio_s`` seconds of audio) within the
        credit; :class:`Abort` with RESOURCE_EXHAUSTED (DEADLINE_EXCEEDED at the cap) when
        the client does not take it in time."""
        timeout = max(self.credit_s, 0.0)
        capped = self.write_cap_s is not None and self.write_cap_s < timeout
        if capped:
            timeout = self.write_cap_s  # type: ignore[assignment]
        started = time.monotonic()
        try:
            await asyncio.wait_for(write, timeout)
        except TimeoutError:
            if capped:
                raise Abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the client read no audio for {timeout:g} s",
                ) from None
            raise Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the client read too slowly: its writes waited "
                f"{self.waited_s + time.monotonic() - started:.1f} s for "
                f"{self.accepted_s:.1f} s of audio (send budget {self.margin_s:g} s, "
                "--send-budget); read the audio as it arrives, or ask for Opus to need less",
            ) from None
        finally:
            self.waited_s += time.monotonic() - started
        self.accepted_s += audio_s
