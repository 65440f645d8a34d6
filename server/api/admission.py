"""Admission: whether a call runs (leases, limits, refusals) and what it cost (accounting).

Concurrency: everything here runs on the server's event loop; the model repository (whose
leases are the slots in use) is only touched from that loop, so it needs no lock.
"""

from __future__ import annotations

import asyncio
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
from distill_serve.server.engine.engine import Engine
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

    def __init__(self, models: ModelRepository, limits: Limits, metrics: Metrics) -> None:
        self.models = models
        self.limits = limits
        self.metrics = metrics
        #: set when the server drains (SIGTERM): new generations are refused, running ones
        #: finish
        self.draining = False

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
        """Lease the spec's model and check the spec and the limits; the call ends with the
        reason when it may not run."""
        mode = mode_label(spec)
        if self.draining:
            await self.refuse(
                context, self.label(spec.model), rpc, mode, grpc.StatusCode.UNAVAILABLE,
                "draining", "server is shutting down (draining); retry on another server",
            )  # fmt: skip
        lease = await self.lease(spec.model, context, rpc, mode, live=open_ended)
        try:
            return await self._check(lease, spec, rpc, mode, context, open_ended)
        except BaseException:
            self.models.release(lease)
            raise

    async def _check(
        self,
        lease: Lease,
        spec: pb.GenerationSpec,
        rpc: str,
        mode: str,
        context: grpc.aio.ServicerContext,
        open_ended: bool,
    ) -> Run:
        """Validate ``spec`` against the leased model and the server's limits."""
        engine, entry = lease.engine, lease.entry
        name = entry.name
        try:
            params = validate(
                raw_request(spec),
                engine.model,
                self.limits,
                secrets.randbits(63),
                open_ended=open_ended,
                unary=rpc == "Generate",
            )
        except InvalidRequest as exc:
            await self.refuse(
                context, name, rpc, mode, grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument",
                str(exc),
            )  # fmt: skip
        busy = self.models.in_flight - 1  # this lease is counted already
        per_model = self.limits.max_concurrent_per_model
        capacity = engine.live_capacity
        if busy >= self.limits.max_concurrent:
            await self.refuse(
                context, name, rpc, params.mode.value, grpc.StatusCode.RESOURCE_EXHAUSTED,
                "resource_exhausted",
                f"server is busy: {busy} of {self.limits.max_concurrent} generations "
                f"running; retry after {RETRY_AFTER_MS} ms",
            )  # fmt: skip
        if per_model and entry.in_flight - 1 >= per_model:
            await self.refuse(
                context, name, rpc, params.mode.value, grpc.StatusCode.RESOURCE_EXHAUSTED,
                "model_busy",
                f"model {name!r} is busy: {entry.in_flight - 1} of {per_model} generations "
                f"(--max-concurrent-per-model) running; retry after {RETRY_AFTER_MS} ms",
            )  # fmt: skip
        if open_ended and capacity and entry.live_sessions - 1 >= capacity:
            await self.refuse(
                context, name, rpc, params.mode.value, grpc.StatusCode.RESOURCE_EXHAUSTED,
                "live_capacity",
                f"model {name!r} at live capacity: {entry.live_sessions - 1} live sessions "
                "is what it keeps in real time (measured vocoder step cost); retry after "
                f"{RETRY_AFTER_MS} ms or use another replica",
            )  # fmt: skip
        self.metrics.active.labels(name, rpc).inc()
        return Run(params, lease, rpc, time.perf_counter(), PipelineStats())

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
