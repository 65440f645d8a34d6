"""Admission: whether a call runs (leases, limits, refusals) and what it cost (accounting).

Concurrency: everything here runs on the server's event loop; the model repository (whose
leases are the slots in use) is only touched from that loop, so it needs no lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

import grpc

from distill_serve.server.api.audio_out import Container, OpusChunks, PcmChunks
from distill_serve.server.api.convert import (
    audio_format,
    mode_label,
    raw_request,
    stats_message,
    stream_header,
)
from distill_serve.server.api.memory import Trimmer
from distill_serve.server.api.queue import AdmissionQueue, QueueFull, WaitedTooLong
from distill_serve.server.engine.engine import Engine
from distill_serve.server.models.entry import ModelEntry
from distill_serve.server.models.metrics import Metrics
from distill_serve.server.models.repository import (
    Lease,
    ModelRepository,
    ModelUnavailable,
    RepositoryFull,
    UnknownModel,
)
from distill_serve.server.pipeline.provenance import provenance_tags
from distill_serve.server.pipeline.request import GenerationParams, InvalidRequest, Limits, validate
from distill_serve.server.pipeline.runner import PipelineStats
from distill_serve.v1 import distill_pb2 as pb

RETRY_AFTER_MS = 500


def client_key(context: grpc.aio.ServicerContext) -> str:
    """Who a call comes from, for fairness: its bearer token (a digest of it), else the
    address it comes from (without the port)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and value:
            digest = hashlib.sha256(str(value).encode()).hexdigest()[:16]
            return f"token:{digest}"
    peer = context.peer() or ""
    host = peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
    return f"peer:{host}"


class Abort(Exception):
    """Ends an RPC with ``code`` and ``details`` (after the outcome is recorded)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Internal(Abort):
    """A failure inside the pipeline, reported as INTERNAL without a traceback."""

    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.INTERNAL, details)


@dataclass
class Run:
    """One generation in flight: its params, lease, stats and timing, and where its last
    block ran (the provider and fallbacks each block reports)."""

    params: GenerationParams
    lease: Lease
    rpc: str
    started: float
    stats: PipelineStats
    provider: str = ""
    fallbacks: int = 0
    first_audio: float | None = None
    #: who asked (queue.py tells clients apart by it)
    client: str = ""

    @property
    def engine(self) -> Engine:
        return self.lease.engine

    @property
    def model(self) -> str:
        return self.lease.entry.name

    def ran_on(self, provider: str, fallbacks: int) -> None:
        self.provider, self.fallbacks = provider, fallbacks

    def stats_message(self) -> pb.GenerationStats:
        return stats_message(
            self.stats, self.started, self.first_audio, self.provider, self.fallbacks
        )

    def tags(self) -> dict[str, str]:
        """How the audio is made: seed, model, bundle and settings."""
        return provenance_tags(self.params, self.model, self.engine.bundle.bundle_id)

    def audio_format(self, container: Container) -> pb.AudioFormat:
        return audio_format(self.params, container, self.tags())

    def stream_header(self, coder: PcmChunks | OpusChunks) -> pb.StreamHeader:
        bundle_id = self.engine.bundle.bundle_id
        return stream_header(self.params, coder.opus, self.model, bundle_id, self.tags())


class Admission:
    """Admits generations to the models of a repository under the server's limits, and
    records each one's outcome in the metrics."""

    def __init__(
        self,
        models: ModelRepository,
        limits: Limits,
        metrics: Metrics,
        trimmer: Trimmer | None = None,
        auto_concurrent: bool = False,
    ) -> None:
        self.models = models
        self.trimmer = trimmer or Trimmer(enabled=False)
        self.limits = limits
        #: ``--max-concurrent`` left to the server: it follows the live capacities
        self.auto_concurrent = auto_concurrent
        self.metrics = metrics
        #: set when the server drains (SIGTERM): new generations are refused, running ones
        #: finish
        self.draining = False
        self.queue = AdmissionQueue(limits.max_waiting, limits.max_wait_s)

    @property
    def max_concurrent(self) -> int:
        """Generations allowed at once now: the configured limit; when it is automatic, at
        least the sum of the loaded models' current live capacities (which follow the step
        costs measured while serving), so a capacity that grows is not capped by the figure
        measured at start."""
        most = self.limits.max_concurrent
        if self.auto_concurrent:
            live = sum(e.engine.live_capacity for e in self.models.entries() if e.engine)
            most = max(most, live)
        return most

    async def drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the running generations to end; whether they did."""
        deadline = time.monotonic() + timeout
        while self.models.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.models.in_flight

    async def refuse(
        self,
        context: grpc.aio.ServicerContext,
        model: str,
        rpc: str,
        mode: str,
        code: grpc.StatusCode,
        reason: str,
        details: str,
    ) -> NoReturn:
        """Count a refusal and end the call with ``code`` (raises)."""
        self.metrics.rejected.labels(model, reason).inc()
        self.metrics.requests.labels(model, rpc, mode, code.name).inc()
        if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
            context.set_trailing_metadata((("retry-after-ms", str(RETRY_AFTER_MS)),))
        await context.abort(code, details)

    async def refuse_invalid(
        self, context: grpc.aio.ServicerContext, model: str, rpc: str, mode: str, exc: Exception
    ) -> NoReturn:
        """Refuse a call whose request is invalid before any model is leased."""
        await self.refuse(
            context, self.label(model), rpc, mode, grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_argument", str(exc),
        )  # fmt: skip

    def label(self, name: str) -> str:
        """A request's model as a metrics label: a name the client chose is only used if it
        is one of the repository's (else every made-up name would be a new series)."""
        name = name or self.models.default_name
        return name if name in self.models.names() else "unknown"

    async def lease(
        self, name: str, context: grpc.aio.ServicerContext, rpc: str, mode: str, live: bool
    ) -> Lease:
        """Hold the named model for one generation, or end the call with why not."""
        label = name or self.models.default_name
        try:
            return await self.models.acquire(name, live)
        except UnknownModel as exc:
            await self.refuse(
                context, "unknown", rpc, mode, grpc.StatusCode.NOT_FOUND, "unknown_model",
                str(exc.args[0]),
            )  # fmt: skip
        except ModelUnavailable as exc:
            await self.refuse(
                context, label, rpc, mode, grpc.StatusCode.UNAVAILABLE, "model_unavailable",
                str(exc),
            )  # fmt: skip
        except RepositoryFull as exc:
            await self.refuse(
                context, label, rpc, mode, grpc.StatusCode.RESOURCE_EXHAUSTED, "models_full",
                str(exc),
            )  # fmt: skip

    async def admit(
        self,
        spec: pb.GenerationSpec,
        rpc: str,
        context: grpc.aio.ServicerContext,
        open_ended: bool = False,
    ) -> Run:
        """Check the spec against its model, wait for a slot in turn (queue.py), and lease
        the model; the call ends with the reason when it may not run."""
        mode = mode_label(spec)
        if self.draining:
            await self.refuse(
                context, self.label(spec.model), rpc, mode, grpc.StatusCode.UNAVAILABLE,
                "draining", "server is shutting down (draining); retry on another server",
            )  # fmt: skip
        lease = await self.lease(spec.model, context, rpc, mode, live=open_ended)
        try:  # an invalid request is refused before it waits
            params = await self._validate(lease, spec, rpc, context, open_ended)
        finally:
            self.models.release(lease)
        entry, client, checked_on = lease.entry, client_key(context), lease.engine
        try:
            await self.queue.turn(entry.name, client, lambda: self._fits(entry, open_ended))
        except (QueueFull, WaitedTooLong) as exc:
            reason, why = self._busy(entry, open_ended)
            queued = (
                f"{self.queue.waiting(entry.name)} requests wait for it already (--queue-size)"
                if isinstance(exc, QueueFull)
                else f"no slot came free within {self.queue.max_wait_s:g} s (--queue-wait)"
            )
            await self.refuse(
                context, entry.name, rpc, mode, grpc.StatusCode.RESOURCE_EXHAUSTED, reason,
                f"{why}; {queued}; retry after {RETRY_AFTER_MS} ms",
            )  # fmt: skip
        try:
            lease = await self.lease(spec.model, context, rpc, mode, live=open_ended)
        except BaseException:
            self.queue.not_taken()
            raise
        try:  # the model may have been reloaded while the request waited: check it again
            if lease.engine is not checked_on:
                params = await self._validate(lease, spec, rpc, context, open_ended)
        except BaseException:
            self.models.release(lease)
            self.queue.not_taken()
            raise
        self.queue.taken(client)
        self.metrics.active.labels(entry.name, rpc).inc()
        return Run(params, lease, rpc, time.perf_counter(), PipelineStats(), client=client)

    async def _validate(
        self,
        lease: Lease,
        spec: pb.GenerationSpec,
        rpc: str,
        context: grpc.aio.ServicerContext,
        open_ended: bool,
    ) -> GenerationParams:
        """``spec`` checked against the leased model; refused with INVALID_ARGUMENT."""
        try:
            return validate(
                raw_request(spec),
                lease.engine.model,
                self.limits,
                secrets.randbits(63),
                open_ended=open_ended,
                unary=rpc == "Generate",
            )
        except InvalidRequest as exc:
            await self.refuse(
                context, lease.entry.name, rpc, mode_label(spec),
                grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument", str(exc),
            )  # fmt: skip

    def _fits(self, entry: ModelEntry, live: bool) -> bool:
        """Whether a generation (``live``: a live session) on ``entry`` may start now."""
        return self._busy(entry, live) == ("", "")

    def _busy(self, entry: ModelEntry, live: bool) -> tuple[str, str]:
        """The limit a new generation on ``entry`` would break: its metrics reason and what
        to tell the client (("", ""): none)."""
        busy, most = self.models.in_flight, self.max_concurrent
        if busy >= most:
            return "resource_exhausted", f"server is busy: {busy} of {most} generations running"
        per_model = self.limits.max_concurrent_per_model
        if per_model and entry.in_flight >= per_model:
            return "model_busy", (
                f"model {entry.name!r} is busy: {entry.in_flight} of {per_model} generations "
                "(--max-concurrent-per-model) running"
            )
        capacity = entry.engine.live_capacity if entry.engine is not None else 0
        if live and capacity and entry.live_sessions >= capacity:
            return "live_capacity", (
                f"model {entry.name!r} at live capacity: {entry.live_sessions} live sessions is "
                "what it keeps in real time (measured vocoder step cost); or use another replica"
            )
        return "", ""

    @contextmanager
    def accounting(
        self, run: Run, context: grpc.aio.ServicerContext | None = None
    ) -> Iterator[None]:
        """Free the slot and record the outcome, however the generation ends (a call ended
        by its deadline counts as DEADLINE_EXCEEDED, one the drain cut as UNAVAILABLE)."""
        status = "OK"
        try:
            yield
        except asyncio.CancelledError:
            if run.lease.revoked:  # an unload's grace ran out: tell the client why
                status = "UNAVAILABLE"
                raise Abort(grpc.StatusCode.UNAVAILABLE, run.lease.revoked) from None
            status = self.cancel_status(context)
            raise
        except Abort as exc:
            status = exc.code.name
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            self.models.release(run.lease)
            self.queue.done(run.client)
            self.trimmer.generation_ended(self.models.in_flight)
            mode = run.params.mode.value
            self.metrics.active.labels(run.model, run.rpc).dec()
            self.metrics.requests.labels(run.model, run.rpc, mode, status).inc()
            if status == "OK":
                self.metrics.latency.labels(run.model, run.rpc, mode).observe(
                    time.perf_counter() - run.started
                )

    def cancel_status(self, context: grpc.aio.ServicerContext | None) -> str:
        """Why a call was cancelled: its deadline, the drain, or its client."""
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None and remaining <= 0:
            return "DEADLINE_EXCEEDED"
        return "UNAVAILABLE" if self.draining else "CANCELLED"

    def first_audio(self, run: Run) -> None:
        """Record the run's time to first audio, once."""
        if run.first_audio is None:
            run.first_audio = time.perf_counter() - run.started
            self.metrics.first_audio.labels(run.model, run.rpc, run.params.mode.value).observe(
                run.first_audio
            )
