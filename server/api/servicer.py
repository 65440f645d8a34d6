"""The gRPC servicer: messages -> plain params -> pipeline blocks -> messages.

Only this module and :mod:`distill_serve.server.api.server` know gRPC types. Concurrency: the
servicer runs on one asyncio loop; the model repository (whose leases are the slots in use)
is only touched from that loop, so it needs no lock. Pipeline steps run in
``_executor`` threads; a live session's steps (controls and blocks) run one at a time, so its
state needs no lock either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import grpc
import numpy as np

from distill_serve.audio import Encoding
from distill_serve.server.api.audio_out import (
    Coded,
    Container,
    OpusChunks,
    PcmChunks,
    chunk_coder,
    container_for,
    whole,
)
from distill_serve.server.api.start_gate import StartGate
from distill_serve.server.engine.engine import Engine, RequestRunner
from distill_serve.server.models.metrics import Metrics
from distill_serve.server.models.repository import (
    Lease,
    ModelEntry,
    ModelRepository,
    ModelState,
    ModelUnavailable,
    RepositoryFull,
    UnknownModel,
)
from distill_serve.server.pipeline.live import (
    LiveBlock,
    LiveSession,
    Pacer,
    RawControl,
    check_control,
    check_lookahead,
)
from distill_serve.server.pipeline.model import ModelSpec
from distill_serve.server.pipeline.render import PipelineStats, audio_blocks
from distill_serve.server.pipeline.request import (
    ChunkMode,
    GenerationParams,
    InvalidRequest,
    Limits,
    RawRequest,
    Spatial,
    check_slider_positions,
    validate,
)
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

MODES = {
    pb.CHUNK_MODE_CROSSFADE: ChunkMode.CROSSFADE,
    pb.CHUNK_MODE_LATENT_INTERP: ChunkMode.LATENT_INTERP,
    pb.CHUNK_MODE_SLIDER: ChunkMode.SLIDER,
}
ENCODINGS = {
    pb.AUDIO_ENCODING_UNSPECIFIED: Encoding.PCM16,
    pb.AUDIO_ENCODING_PCM16: Encoding.PCM16,
    pb.AUDIO_ENCODING_PCM24: Encoding.PCM24,
    pb.AUDIO_ENCODING_FLOAT32: Encoding.FLOAT32,
    pb.AUDIO_ENCODING_FLAC: Encoding.FLAC,
    pb.AUDIO_ENCODING_OPUS: Encoding.OPUS,
}
ENCODING_ENUM = {v: k for k, v in ENCODINGS.items() if k != pb.AUDIO_ENCODING_UNSPECIFIED}
CONTAINERS = {
    pb.CONTAINER_UNSPECIFIED: None,
    pb.CONTAINER_RAW: Container.RAW,
    pb.CONTAINER_WAV: Container.WAV,
    pb.CONTAINER_FLAC: Container.FLAC,
    pb.CONTAINER_OGG: Container.OGG,
}
CONTAINER_ENUM = {v: k for k, v in CONTAINERS.items() if v is not None}
SPATIAL = {
    pb.SPATIAL_MODE_UNSPECIFIED: Spatial.MONO,
    pb.SPATIAL_MODE_MONO: Spatial.MONO,
    pb.SPATIAL_MODE_STEREO_MID_SIDE: Spatial.STEREO_MID_SIDE,
    pb.SPATIAL_MODE_DUAL_SEED: Spatial.DUAL_SEED,
}
RETRY_AFTER_MS = 500
#: Controls a live session buffers before the server stops reading (gRPC flow control then
#: holds the client back): they are applied between blocks, all at once.
CONTROL_QUEUE_SIZE = 16


def raw_request(spec: pb.GenerationSpec) -> RawRequest:
    """Proto spec -> plain request; unknown enum values are refused here."""
    if spec.mode != pb.CHUNK_MODE_UNSPECIFIED and spec.mode not in MODES:
        raise InvalidRequest("mode", f"unknown chunk mode {spec.mode}")
    if spec.encoding not in ENCODINGS:
        raise InvalidRequest(
            "encoding",
            f"unknown encoding {spec.encoding}; use PCM16, PCM24, FLOAT32, FLAC or OPUS",
        )
    if spec.spatial not in SPATIAL:
        raise InvalidRequest("spatial", f"unknown spatial mode {spec.spatial}")
    which = spec.WhichOneof("slider_input")
    return RawRequest(
        mode=MODES.get(spec.mode),
        duration_s=spec.duration_s,
        seed=spec.seed if spec.HasField("seed") else None,
        sample_rate=spec.sample_rate,
        encoding=ENCODINGS[spec.encoding],
        spatial=SPATIAL[spec.spatial],
        stereo_width=spec.stereo_width if spec.HasField("stereo_width") else None,
        steps_between=spec.steps_between if spec.HasField("steps_between") else None,
        evolution_amount=spec.evolution_amount if spec.HasField("evolution_amount") else None,
        latent=list(spec.latent.values) if which == "latent" else None,
        slider_positions=(
            [(p.index, p.position) for p in spec.sliders.positions] if which == "sliders" else None
        ),
        chunk_duration_s=spec.chunk_duration_s if spec.HasField("chunk_duration_s") else None,
        bitrate_bps=spec.bitrate_bps if spec.HasField("bitrate_bps") else None,
        bits_per_sample=spec.bits_per_sample if spec.HasField("bits_per_sample") else None,
    )


def raw_control(control: pb.LiveControl) -> RawControl:
    """Proto live control -> plain control (checked by :func:`check_control`)."""
    which = control.WhichOneof("target")
    return RawControl(
        sequence=control.sequence,
        latent=list(control.latent.values) if which == "latent" else None,
        slider_positions=(
            [(p.index, p.position) for p in control.sliders.positions]
            if which == "sliders"
            else None
        ),
        evolution_amount=(
            control.evolution_amount if control.HasField("evolution_amount") else None
        ),
        stereo_width=control.stereo_width if control.HasField("stereo_width") else None,
        transition_s=control.transition_s if control.HasField("transition_s") else None,
        stop=control.stop,
    )


@dataclass
class _Run:
    """One generation in flight: its params, stats and timing."""

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

    def stats_message(self) -> pb.GenerationStats:
        return pb.GenerationStats(
            time_to_first_audio_s=self.first_audio or 0.0,
            total_s=time.perf_counter() - self.started,
            execution_provider=self.provider,
            decoder_chunks=self.stats.decoder_chunks,
            vocoder_blocks=self.stats.vocoder_blocks,
            cpu_fallbacks=self.fallbacks,
        )

    def audio_format(self, container: Container) -> pb.AudioFormat:
        p = self.params
        return pb.AudioFormat(
            sample_rate=p.sample_rate,
            channels=p.channels,
            encoding=ENCODING_ENUM[p.encoding],
            container=CONTAINER_ENUM[container],
            total_samples=p.total_samples,
            bits_per_sample=p.bits_per_sample,
            bitrate_bps=p.bitrate_bps,
        )

    def stream_header(self, coder: PcmChunks | OpusChunks) -> pb.StreamHeader:
        header = pb.StreamHeader(
            format=self.audio_format(Container.RAW),
            seed=self.params.seed,
            model=self.model,
            model_version=self.engine.bundle.bundle_id,
        )
        if coder.opus is not None:
            o = coder.opus
            header.opus.CopyFrom(
                pb.OpusHeader(
                    id_header=o.id_header,
                    pre_skip=o.pre_skip,
                    channels=o.channels,
                    frame_duration_ms=o.frame_duration_ms,
                )
            )
        return header


class DistillServicer(pb_grpc.DistillServiceServicer):
    """The Distill RPCs over a :class:`ModelRepository` (one model or many)."""

    def __init__(self, models: ModelRepository, limits: Limits, metrics: Metrics) -> None:
        self._models = models
        if not limits.max_concurrent:  # auto: room for the live sessions it can keep up
            capacity = sum(e.engine.live_capacity for e in models.entries() if e.engine)
            limits = replace(limits, max_concurrent=max(4, capacity))
        self._limits = limits
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(limits.max_concurrent, thread_name_prefix="generate")
        # live sessions in their costly start-up at once: one per core (the step runners)
        self._start_gate = StartGate(os.cpu_count() or 1)

    # --- helpers -------------------------------------------------------------------------
    async def _refuse(
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
        self._metrics.rejected.labels(model, reason).inc()
        self._metrics.requests.labels(model, rpc, mode, code.name).inc()
        if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
            context.set_trailing_metadata((("retry-after-ms", str(RETRY_AFTER_MS)),))
        await context.abort(code, details)

    def _label(self, name: str) -> str:
        """A request's model as a metrics label: a name the client chose is only used if it
        is one of the repository's (else every made-up name would be a new series)."""
        name = name or self._models.default_name
        return name if name in self._models.names() else "unknown"

    async def _lease(
        self, name: str, context: grpc.aio.ServicerContext, rpc: str, mode: str, live: bool
    ) -> Lease:
        """Hold the named model for one generation, or end the call with why not."""
        label = name or self._models.default_name
        try:
            return await self._models.acquire(name, live)
        except UnknownModel as exc:
            await self._refuse(
                context, "unknown", rpc, mode, grpc.StatusCode.NOT_FOUND, "unknown_model",
                str(exc.args[0]),
            )  # fmt: skip
        except ModelUnavailable as exc:
            await self._refuse(
                context, label, rpc, mode, grpc.StatusCode.UNAVAILABLE, "model_unavailable",
                str(exc),
            )  # fmt: skip
        except RepositoryFull as exc:
            await self._refuse(
                context, label, rpc, mode, grpc.StatusCode.RESOURCE_EXHAUSTED, "models_full",
                str(exc),
            )  # fmt: skip

    async def _admit(
        self,
        spec: pb.GenerationSpec,
        rpc: str,
        context: grpc.aio.ServicerContext,
        open_ended: bool = False,
    ) -> _Run:
        mode = _mode_label(spec)
        lease = await self._lease(spec.model, context, rpc, mode, live=open_ended)
        try:
            return await self._check(lease, spec, rpc, mode, context, open_ended)
        except BaseException:
            self._models.release(lease)
            raise

    async def _check(
        self,
        lease: Lease,
        spec: pb.GenerationSpec,
        rpc: str,
        mode: str,
        context: grpc.aio.ServicerContext,
        open_ended: bool,
    ) -> _Run:
        """Validate ``spec`` against the leased model and the server's limits."""
        engine, entry = lease.engine, lease.entry
        name = entry.name
        try:
            params = validate(
                raw_request(spec),
                engine.model,
                self._limits,
                secrets.randbits(63),
                open_ended=open_ended,
                unary=rpc == "Generate",
            )
        except InvalidRequest as exc:
            await self._refuse(
                context, name, rpc, mode, grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument",
                str(exc),
            )  # fmt: skip
        busy = self._models.in_flight - 1  # this lease is counted already
        per_model = self._limits.max_concurrent_per_model
        capacity = engine.live_capacity
        if busy >= self._limits.max_concurrent:
            await self._refuse(
                context, name, rpc, params.mode.value, grpc.StatusCode.RESOURCE_EXHAUSTED,
                "resource_exhausted",
                f"server is busy: {busy} of {self._limits.max_concurrent} generations "
                f"running; retry after {RETRY_AFTER_MS} ms",
            )  # fmt: skip
        if per_model and entry.in_flight - 1 >= per_model:
            await self._refuse(
                context, name, rpc, params.mode.value, grpc.StatusCode.RESOURCE_EXHAUSTED,
                "model_busy",
                f"model {name!r} is busy: {entry.in_flight - 1} of {per_model} generations "
                f"(--max-concurrent-per-model) running; retry after {RETRY_AFTER_MS} ms",
            )  # fmt: skip
        if open_ended and capacity and entry.live_sessions - 1 >= capacity:
            await self._refuse(
                context, name, rpc, params.mode.value, grpc.StatusCode.RESOURCE_EXHAUSTED,
                "live_capacity",
                f"model {name!r} at live capacity: {entry.live_sessions - 1} live sessions "
                "is what it keeps in real time (measured vocoder step cost); retry after "
                f"{RETRY_AFTER_MS} ms or use another replica",
            )  # fmt: skip
        self._metrics.active.labels(name, rpc).inc()
        return _Run(params, lease, rpc, time.perf_counter(), PipelineStats())

    @contextmanager
    def _accounting(self, run: _Run) -> Iterator[None]:
        """Free the slot and record the outcome, however the generation ends."""
        status = "OK"
        try:
            yield
        except asyncio.CancelledError:
            if run.lease.revoked:  # an unload's grace ran out: tell the client why
                status = "UNAVAILABLE"
                raise _Abort(grpc.StatusCode.UNAVAILABLE, run.lease.revoked) from None
            status = "CANCELLED"
            raise
        except _Abort as exc:
            status = exc.code.name
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            self._models.release(run.lease)
            mode = run.params.mode.value
            self._metrics.active.labels(run.model, run.rpc).dec()
            self._metrics.requests.labels(run.model, run.rpc, mode, status).inc()
            if status == "OK":
                self._metrics.latency.labels(run.model, run.rpc, mode).observe(
                    time.perf_counter() - run.started
                )

    def _first_audio(self, run: _Run) -> None:
        if run.first_audio is None:
            run.first_audio = time.perf_counter() - run.started
            self._metrics.first_audio.labels(run.model, run.rpc, run.params.mode.value).observe(
                run.first_audio
            )

    async def _blocks(self, run: _Run) -> AsyncIterator[np.ndarray]:
        """Pipeline blocks, each computed in a worker thread; stops when cancelled."""
        runner = run.engine.runner()
        gen = audio_blocks(runner, run.engine.model, run.params, run.stats)
        loop = asyncio.get_running_loop()
        try:
            while True:
                block = await loop.run_in_executor(self._executor, next, gen, None)
                run.provider, run.fallbacks = runner.provider, runner.fallbacks
                if block is None:
                    return
                self._first_audio(run)
                yield block
        except Exception as exc:
            log.exception("generation failed")
            raise _Internal(f"generation failed: {type(exc).__name__}: {exc}") from exc

    # --- RPCs ----------------------------------------------------------------------------
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        try:
            container = _container(request)
        except InvalidRequest as exc:
            await self._refuse(
                context, self._label(request.spec.model), "Generate",
                _mode_label(request.spec), grpc.StatusCode.INVALID_ARGUMENT,
                "invalid_argument", str(exc),
            )  # fmt: skip
        run = await self._admit(request.spec, "Generate", context)
        try:
            with self._accounting(run):
                blocks = [b async for b in self._blocks(run)]
        except _Abort as exc:
            await context.abort(exc.code, exc.details)
        audio = np.concatenate(blocks, axis=1)
        p = run.params
        data = await asyncio.to_thread(whole, audio, p, container)
        return pb.GenerateResponse(
            audio=data,
            format=run.audio_format(container),
            seed=p.seed,
            stats=run.stats_message(),
        )

    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        run = await self._admit(request.spec, "GenerateStream", context)
        try:
            with self._accounting(run):
                coder = chunk_coder(run.params)
                yield pb.GenerateStreamResponse(header=run.stream_header(coder))
                offset = 0
                sequence = 0
                async for block in self._blocks(run):
                    coded = await _code(coder, block)
                    yield pb.GenerateStreamResponse(audio=_chunk(coded, sequence, offset))
                    offset += coded.frames
                    sequence += 1
                if (coded_end := await _finish(coder)) is not None:
                    yield pb.GenerateStreamResponse(audio=_chunk(coded_end, sequence, offset))
                yield pb.GenerateStreamResponse(end=pb.StreamEnd(stats=run.stats_message()))
        except _Abort as exc:
            await context.abort(exc.code, exc.details)

    # The stubs type a bidi handler as returning an iterator; grpc.aio also takes one that
    # writes with ``context.write`` and returns None (this one: it paces its writes).
    async def GenerateLive(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[pb.GenerateLiveRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        requests = aiter(request_iterator)
        try:
            first = await anext(requests, None)
            if first is None or first.WhichOneof("kind") != "start":
                raise InvalidRequest(
                    "start", "the first GenerateLiveRequest must carry a LiveStart"
                )
            start = first.start
            lookahead = check_lookahead(
                start.lookahead_s if start.HasField("lookahead_s") else None, self._limits
            )
        except InvalidRequest as exc:
            model = first.start.spec.model if first is not None else ""
            await self._refuse(
                context, self._label(model), "GenerateLive", "unknown",
                grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument", str(exc),
            )  # fmt: skip
        run = await self._admit(start.spec, "GenerateLive", context, open_ended=True)
        positions = raw_request(start.spec).slider_positions
        runner = run.engine.runner()
        session = LiveSession(
            runner,
            run.engine.model,
            run.params,
            lookahead,
            check_slider_positions(positions, run.engine.model) if positions else None,
            run.stats,
        )
        controls: asyncio.Queue[pb.LiveControl | InvalidRequest | None] = asyncio.Queue(
            CONTROL_QUEUE_SIZE
        )
        reader = asyncio.create_task(_read_controls(requests, controls))
        try:
            with self._accounting(run):  # the end is logged before the slot is freed
                try:
                    reason = await self._live(
                        run, runner, session, Pacer(lookahead), controls, context
                    )
                except asyncio.CancelledError:
                    if run.lease.revoked:
                        log.info("live session ended: %s", run.lease.revoked)
                        raise  # _accounting turns it into UNAVAILABLE
                    log.info(
                        "live session ended: cancelled by the client after %.1f s", session.seconds
                    )
                    raise
                except _Abort as exc:
                    log.info("live session ended: %s: %s", exc.code.name, exc.details)
                    raise
                except Exception as exc:
                    if not context.done():
                        raise
                    # a write or abort on a call the client has already left: not a crash
                    log.info(
                        "live session ended: the client had gone after %.1f s (%s)",
                        session.seconds,
                        type(exc).__name__,
                    )
                    raise asyncio.CancelledError from exc
                log.info("live session ended: %s after %.1f s of audio", reason, session.seconds)
        except _Abort as exc:
            await _abort_unless_gone(context, exc)
        finally:
            reader.cancel()

    async def _live(
        self,
        run: _Run,
        runner: RequestRunner,
        session: LiveSession,
        pacer: Pacer,
        controls: asyncio.Queue[pb.LiveControl | InvalidRequest | None],
        context: grpc.aio.ServicerContext,
    ) -> str:
        """Blocks paced to real time, controls applied between blocks, until the end; returns
        why it ended (``StreamEnd.reason``). Its costly first blocks wait for a start slot
        (server/api/start_gate.py)."""
        p, model = run.params, run.engine.model
        loop = asyncio.get_running_loop()
        coder = chunk_coder(p)
        header = run.stream_header(coder)
        header.format.total_samples = 0  # open-ended
        await self._send(context, pb.GenerateLiveResponse(header=header))
        sequence = last_control = offset = 0
        reason = ""
        ticket = await self._start_gate.enter(session.startup_blocks)
        try:
            while True:
                while not reason and not controls.empty():
                    item = controls.get_nowait()
                    if item is None:
                        reason = "client_closed"
                        break
                    try:
                        if isinstance(item, InvalidRequest):
                            raise item
                        control = check_control(raw_control(item), model, p, last_control)
                    except InvalidRequest as exc:
                        self._metrics.rejected.labels(run.model, "invalid_argument").inc()
                        raise _Abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"live control after sequence {last_control}: {exc}",
                        ) from None
                    last_control = control.sequence
                    session.apply(control)
                    if control.stop:
                        reason = "stop"
                if not reason and session.seconds >= self._limits.max_live_s:
                    reason = "max_live_duration"
                if not reason and (delay := pacer.delay(time.perf_counter())) > 0:
                    await asyncio.sleep(delay)
                    continue  # controls that came in meanwhile go into the next block
                step = session.finish if reason else session.next_block
                # its steps are needed when the audio sent so far runs out for the listener
                deadline = time.monotonic() + pacer.underrun_in(time.perf_counter())
                try:
                    block: LiveBlock = await loop.run_in_executor(self._executor, step, deadline)
                except Exception as exc:
                    log.exception("live generation failed")
                    raise _Abort(
                        grpc.StatusCode.INTERNAL, f"generation failed: {type(exc).__name__}: {exc}"
                    ) from exc
                run.provider, run.fallbacks = runner.provider, runner.fallbacks
                self._first_audio(run)
                n = block.audio.shape[1]
                # the last (fade-out) block carries the codec's end too: one block, as with PCM
                coded = await (_code_last if reason else _code)(coder, block.audio)
                chunk = _chunk(coded, sequence, offset, block.control_sequence)
                await self._send(context, pb.GenerateLiveResponse(audio=chunk))
                pacer.sent(n / p.sample_rate, time.perf_counter())
                ticket.block_sent()
                offset += coded.frames
                sequence += 1
                if reason:
                    break
            await self._send(
                context,
                pb.GenerateLiveResponse(end=pb.StreamEnd(stats=run.stats_message(), reason=reason)),
            )
            return reason
        finally:
            ticket.close()

    async def _send(self, context: grpc.aio.ServicerContext, msg: pb.GenerateLiveResponse) -> None:
        """Write one live message; a client that reads nothing for the idle timeout is
        dropped (flow control would otherwise hold the session and its slot forever)."""
        timeout = self._limits.live_idle_timeout_s
        try:
            await asyncio.wait_for(context.write(msg), timeout)
        except TimeoutError:
            raise _Abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"live session idle: the client read no audio for {timeout:g} s",
            ) from None

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        lease = await self._lease(request.model, context, "GetModelInfo", "none", live=False)
        self._models.release(lease)  # info needs the engine loaded, not held
        engine, name = lease.engine, lease.entry.name
        model = engine.model
        bundle = engine.bundle
        return pb.GetModelInfoResponse(
            latent_dim=model.latent_dim,
            sliders=_sliders(model),
            sample_rates=list(model.sample_rates),
            default_sample_rate=model.vocoder_rate,
            encodings=list(ENCODING_ENUM.values()),
            containers=list(CONTAINER_ENUM.values()),
            limits=pb.Limits(
                max_duration_s=self._limits.max_duration_s,
                max_concurrent_generations=self._limits.max_concurrent,
                max_steps_between=self._limits.max_steps_between,
                min_chunk_duration_s=model.min_chunk_duration_s,
                max_chunk_duration_s=model.max_chunk_duration_s,
                max_live_s=self._limits.max_live_s,
                live_idle_timeout_s=self._limits.live_idle_timeout_s,
                min_lookahead_s=self._limits.min_lookahead_s,
                max_lookahead_s=self._limits.max_lookahead_s,
            ),
            files=[pb.BundleFile(path=f.path, role=f.role, sha256=f.sha256) for f in bundle.files],
            execution_provider=engine.primary_provider,
            native_chunk_duration_s=model.chunk_duration_s,
            bundle_format_version=int(bundle.manifest["format_version"]),
            vocoder_precision=engine.vocoder_precision,
            provider_note=engine.provider_note,
            vocoder_path=engine.vocoder_path,
            live_capacity=engine.live_capacity,
            model=name,
            model_version=bundle.bundle_id,
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[self._status(e) for e in self._models.entries()],
            default_model=self._models.default_name,
        )

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadModelResponse:
        await _require_name(request.name, context)
        try:
            entry = await self._models.load(request.name)
        except UnknownModel as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
            raise  # unreachable: abort raises
        except RepositoryFull as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise
        return pb.LoadModelResponse(model=self._status(entry))

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        await _require_name(request.name, context)
        grace = request.grace_s if request.HasField("grace_s") else None
        if grace is not None and not (0.0 <= grace <= 3600.0):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"grace_s must be in [0, 3600], got {grace}"
            )
        try:
            entry = await self._models.unload(request.name, grace)
        except UnknownModel as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
            raise  # unreachable: abort raises
        return pb.UnloadModelResponse(model=self._status(entry))

    def _status(self, entry: ModelEntry) -> pb.ModelStatus:
        spec = entry.spec
        return pb.ModelStatus(
            name=entry.name,
            version=entry.version,
            state=MODEL_STATES[entry.state],
            reason=entry.reason,
            vocoder=entry.vocoder,
            sample_rates=list(spec.sample_rates) if spec else [],
            default_sample_rate=spec.vocoder_rate if spec else 0,
            sliders=_sliders(spec) if spec else [],
            in_flight=entry.in_flight,
            is_default=entry.name == self._models.default_name,
        )

    @property
    def models(self) -> ModelRepository:
        return self._models

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Abort(Exception):
    """Ends an RPC with ``code`` and ``details`` (after the outcome is recorded)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _Internal(_Abort):
    """A failure inside the pipeline, reported as INTERNAL without a traceback."""

    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.INTERNAL, details)


async def _abort_unless_gone(context: grpc.aio.ServicerContext, exc: _Abort) -> None:
    """End the call with ``exc``'s status, unless the call is over already (a client that
    cancelled or went away between the failure and now): then there is nobody to tell, and
    grpc would log the refused status batch as a crash."""
    if context.done():
        log.info("live session: the client had gone; %s not sent", exc.code.name)
        return
    try:
        await context.abort(exc.code, exc.details)
    except grpc.aio.AbortError:
        raise  # the normal way out of a handler after abort
    except Exception as gone:  # the call ended while the status was being sent
        log.info("live session: the client had gone; %s not sent (%s)", exc.code.name, gone)


async def _read_controls(
    requests: AsyncIterator[pb.GenerateLiveRequest],
    queue: asyncio.Queue[pb.LiveControl | InvalidRequest | None],
) -> None:
    """Move a live session's controls into its bounded queue; None marks the client's
    half-close, an :class:`InvalidRequest` a message that is not a control."""
    try:
        async for msg in requests:
            if msg.WhichOneof("kind") != "control":
                raise InvalidRequest("start", "send LiveStart once, first; then only controls")
            await queue.put(msg.control)
        await queue.put(None)
    except InvalidRequest as exc:
        await queue.put(exc)


MODEL_STATES = {
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.READY: pb.MODEL_STATE_READY,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
    ModelState.UNLOADING: pb.MODEL_STATE_UNLOADING,
    ModelState.UNLOADED: pb.MODEL_STATE_UNLOADED,
}


def _sliders(model: ModelSpec) -> list[pb.Slider]:
    if model.sliders is None:
        return []
    s = model.sliders
    return [
        pb.Slider(index=i, label=label, min_position=-s.max_position, max_position=s.max_position)
        for i, label in enumerate(s.labels)
    ]


async def _require_name(name: str, context: grpc.aio.ServicerContext) -> None:
    """Model control names its model: an empty name (the default model elsewhere) is
    refused rather than read as "the default"."""
    if not name:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, "name: give the model's name (see ListModels)"
        )


def _mode_label(spec: Any) -> str:
    return MODES[spec.mode].value if spec.mode in MODES else "unknown"


def _container(request: pb.GenerateRequest) -> Container:
    """The unary reply's container, checked against its encoding."""
    if request.container not in CONTAINERS:
        raise InvalidRequest(
            "container", f"unknown value {request.container}; use RAW, WAV, FLAC or OGG"
        )
    encoding = ENCODINGS.get(request.spec.encoding)
    if encoding is None:  # refused with its own message by validation
        return Container.RAW
    try:
        return container_for(encoding, CONTAINERS[request.container])
    except ValueError as exc:
        raise InvalidRequest("container", str(exc)) from None


async def _code(coder: PcmChunks | OpusChunks, block: np.ndarray) -> Coded:
    """Code one block off the event loop: Opus costs ~50 ms of CPU per stereo audio
    second, too much for the loop that paces live sessions."""
    return await asyncio.to_thread(coder.encode, block)


async def _code_last(coder: PcmChunks | OpusChunks, block: np.ndarray) -> Coded:
    """Code a stream's last block with the codec's end (Opus: its delay, padded frame)."""

    def last() -> Coded:
        coded, end = coder.encode(block), coder.finish()
        if end is None:
            return coded
        return replace(coded, frames=coded.frames + end.frames, packets=coded.packets + end.packets)

    return await asyncio.to_thread(last)


async def _finish(coder: PcmChunks | OpusChunks) -> Coded | None:
    """The stream's last chunk (Opus: the last frame and the encoder's delay), if any."""
    return await asyncio.to_thread(coder.finish)


def _chunk(coded: Coded, sequence: int, offset: int, control: int = 0) -> pb.AudioChunk:
    return pb.AudioChunk(
        sequence=sequence,
        sample_offset=offset,
        num_samples=coded.frames,
        data=coded.data,
        packets=coded.packets,
        control_sequence=control,
    )
