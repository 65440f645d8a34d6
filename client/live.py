"""Live sessions from the client's side: iterate audio blocks while sending controls.

A session object owns one ``GenerateLive`` call. Iterate it (in the audio thread) for
:class:`~distill_serve.client.records.AudioBlock` values; call :meth:`set_sliders`,
:meth:`set_latent`, :meth:`set_evolution`, :meth:`set_stereo_width` or :meth:`stop` from any
thread (the sync session) or from the event loop (the asyncio one). Each control gets the
next sequence number, which it returns; ``AudioBlock.control_sequence`` says from which
block on a change is in the audio.

A timeline session (``start_position``) puts every block at its timeline position
(``AudioBlock.position``) and takes each control at the ``position`` it names; a control
the server could not take is in :attr:`refusals` (the session plays on).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from distill_serve.client.records import (
    AudioBlock,
    ControlRefusal,
    DistillError,
    GenerationStats,
)
from distill_serve.client.requests import Collector, build_spec
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc


def start_request(
    mode: str,
    lookahead: float | None,
    seed: int | None,
    sliders: Mapping[int, int] | None,
    latent: Sequence[float] | np.ndarray | None,
    options: Any,
    start_position: int | None = None,
    unpaced: bool = False,
) -> pb.GenerateLiveRequest:
    """The first message of a live session (``options``: :func:`build_spec`'s other
    keywords; ``start_position``: a timeline session's start, in output frames)."""
    spec = build_spec(mode, 0.0, seed=seed, sliders=sliders, latent=latent, **options)
    start = pb.LiveStart(spec=spec, unpaced=unpaced)
    if lookahead is not None:
        start.lookahead_s = lookahead
    if start_position is not None:
        start.start_position = start_position
    return pb.GenerateLiveRequest(start=start)


def control_fields(
    *,
    sliders: Mapping[int, int] | None = None,
    latent: Sequence[float] | np.ndarray | None = None,
    evolution_amount: float | None = None,
    stereo_width: float | None = None,
    transition_s: float | None = None,
    stop: bool = False,
    position: int | None = None,
) -> pb.LiveControl:
    """A :class:`LiveControl` without its sequence number (``position``: where a timeline
    session takes it)."""
    control = pb.LiveControl(stop=stop)
    if position is not None:
        control.position = position
    if sliders is not None:
        control.sliders.positions.extend(
            pb.SliderPosition(index=i, position=p) for i, p in sliders.items()
        )
    if latent is not None:
        control.latent.values.extend(float(v) for v in np.asarray(latent).ravel())
    for name, value in (
        ("evolution_amount", evolution_amount),
        ("stereo_width", stereo_width),
        ("transition_s", transition_s),
    ):
        if value is not None:
            setattr(control, name, value)
    return control


class _Controls:
    """Sequence numbers and the control methods both session classes offer."""

    def __init__(self) -> None:
        self._sequence = 0
        self._lock = threading.Lock()
        #: why the server ended the session ("stop", "client_closed", "max_live_duration")
        self.end_reason = ""
        self.stats: GenerationStats | None = None
        #: controls the server refused without ending the session, in order
        self.refusals: list[ControlRefusal] = []

    def _put(self, msg: pb.GenerateLiveRequest | None) -> None:
        raise NotImplementedError

    def send(self, control: pb.LiveControl) -> int:
        """Send ``control`` with the next sequence number; returns that number."""
        with self._lock:  # numbers and queue order agree across threads
            self._sequence += 1
            control.sequence = self._sequence
            self._put(pb.GenerateLiveRequest(control=control))
            return self._sequence

    def set_sliders(
        self,
        positions: Mapping[int, int],
        transition_s: float | None = None,
        *,
        position: int | None = None,
    ) -> int:
        """Move the named sliders (``{index: position}``); the others stay where they are.
        ``position`` (every control, timeline sessions): where on the timeline it applies."""
        return self.send(
            control_fields(sliders=positions, transition_s=transition_s, position=position)
        )

    def set_latent(
        self,
        latent: Sequence[float] | np.ndarray,
        transition_s: float | None = None,
        *,
        position: int | None = None,
    ) -> int:
        """Steer toward a latent vector (``latent_dim`` values)."""
        return self.send(
            control_fields(latent=latent, transition_s=transition_s, position=position)
        )

    def set_evolution(self, amount: float, *, position: int | None = None) -> int:
        """Drift per chunk around the current target, in [0, 1]."""
        return self.send(control_fields(evolution_amount=amount, position=position))

    def set_stereo_width(
        self, width: float, transition_s: float | None = None, *, position: int | None = None
    ) -> int:
        """Stereo width of a stereo session: ``stereo`` in [0, 2], ``haas`` in [0, 1.5]."""
        return self.send(
            control_fields(stereo_width=width, transition_s=transition_s, position=position)
        )

    def stop(self, *, position: int | None = None) -> int:
        """Fade out and end: iteration ends once the fade-out has arrived (a timeline
        session's ``position``: at that block)."""
        return self.send(control_fields(stop=True, position=position))

    def _on_message(self, collector: Collector, msg: pb.GenerateLiveResponse) -> AudioBlock | None:
        """One reply: the block it carries, if any (the end message sets ``end_reason``)."""
        kind = msg.WhichOneof("event")
        if kind == "end":
            self.end_reason = msg.end.reason
        elif kind == "refused":
            r = msg.refused
            self.refusals.append(ControlRefusal(r.sequence, r.code, r.message))
        block = collector.feed(msg)
        self.stats = collector.stats
        return block


class LiveSession(_Controls):
    """A blocking live session (see :meth:`distill_serve.client.Client.live`)."""

    def __init__(
        self, stub: pb_grpc.DistillServiceStub, first: pb.GenerateLiveRequest, kw: dict[str, Any]
    ) -> None:
        super().__init__()
        self._queue: queue.Queue[pb.GenerateLiveRequest | None] = queue.Queue()
        self._collector = Collector(time.perf_counter())
        self._call = stub.GenerateLive(self._requests(first), **kw)

    def _requests(self, first: pb.GenerateLiveRequest) -> Iterator[pb.GenerateLiveRequest]:
        yield first
        while (msg := self._queue.get()) is not None:
            yield msg

    def _put(self, msg: pb.GenerateLiveRequest | None) -> None:
        self._queue.put(msg)

    def __iter__(self) -> Iterator[AudioBlock]:
        try:
            for msg in self._call:
                if (block := self._on_message(self._collector, msg)) is not None:
                    yield block
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        """End the call now (no fade-out) and stop sending controls."""
        self._queue.put(None)
        self._call.cancel()

    def __enter__(self) -> LiveSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLiveSession(_Controls):
    """An asyncio live session (see :meth:`distill_serve.client.AsyncClient.live`).
    Call its control methods from the event loop's thread."""

    def __init__(
        self,
        stub: pb_grpc.DistillServiceAsyncStub,
        first: pb.GenerateLiveRequest,
        kw: dict[str, Any],
    ) -> None:
        super().__init__()
        self._queue: asyncio.Queue[pb.GenerateLiveRequest | None] = asyncio.Queue()
        self._collector = Collector(time.perf_counter())
        self._call = stub.GenerateLive(self._requests(first), **kw)

    async def _requests(
        self, first: pb.GenerateLiveRequest
    ) -> AsyncIterator[pb.GenerateLiveRequest]:
        yield first
        while (msg := await self._queue.get()) is not None:
            yield msg

    def _put(self, msg: pb.GenerateLiveRequest | None) -> None:
        self._queue.put_nowait(msg)

    async def __aiter__(self) -> AsyncIterator[AudioBlock]:
        try:
            async for msg in self._call:
                if (block := self._on_message(self._collector, msg)) is not None:
                    yield block
        except grpc.RpcError as exc:
            raise DistillError.wrap(exc) from None
        finally:
            self.close()

    def close(self) -> None:
        """End the call now (no fade-out) and stop sending controls."""
        self._queue.put_nowait(None)
        self._call.cancel()

    async def __aenter__(self) -> AsyncLiveSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
