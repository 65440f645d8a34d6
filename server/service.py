"""The gRPC servicer: messages -> plain params -> pipeline blocks -> messages.

Only this module and :mod:`distill_serve.server.app` know gRPC types. Concurrency: the
servicer runs on one asyncio loop; ``_uses`` (generations per engine, whose sum is the slot
count) is only touched from that loop, so it needs no lock. Pipeline steps run in
``_executor`` threads; a live session's steps (controls and blocks) run one at a time, so its
state needs no lock either.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import grpc
import numpy as np

from distill_serve.audio import Encoding, encode, wav_bytes
from distill_serve.client.v1 import distill_pb2 as pb
from distill_serve.client.v1 import distill_pb2_grpc as pb_grpc
from distill_serve.server.engine import Engine, RequestRunner
from distill_serve.server.live import (
    LiveBlock,
    LiveSession,
    Pacer,
    RawControl,
    check_control,
    check_lookahead,
)
from distill_serve.server.metrics import Metrics
from distill_serve.server.pipeline import PipelineStats, audio_blocks
from distill_serve.server.request import (
    ChunkMode,
    GenerationParams,
    InvalidRequest,
    Limits,
    RawRequest,
    Spatial,
    check_slider_positions,
    validate,
)

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
}
ENCODING_ENUM = {v: k for k, v in ENCODINGS.items() if k != pb.AUDIO_ENCODING_UNSPECIFIED}
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
            "encoding", f"unknown encoding {spec.encoding}; use PCM16, PCM24 or FLOAT32"
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
    engine: Engine
    rpc: str
    started: float
    stats: PipelineStats
    provider: str = ""
    fallbacks: int = 0
    first_audio: float | None = None

    def stats_message(self) -> pb.GenerationStats:
        return pb.GenerationStats(
            time_to_first_audio_s=self.first_audio or 0.0,
            total_s=time.perf_counter() - self.started,
            execution_provider=self.provider,
            decoder_chunks=self.stats.decoder_chunks,
            vocoder_blocks=self.stats.vocoder_blocks,
            cpu_fallbacks=self.fallbacks,
        )

    def audio_format(self, container: int) -> pb.AudioFormat:
        p = self.params
        return pb.AudioFormat(
            sample_rate=p.sample_rate,
            channels=p.channels,
            encoding=ENCODING_ENUM[p.encoding],
            container=container,
            total_samples=p.total_samples,
        )


class DistillServicer(pb_grpc.DistillServiceServicer):
    """Generate, GenerateStream and GetModelInfo over one :class:`Engine`."""

    def __init__(self, engine: Engine, limits: Limits, metrics: Metrics) -> None:
        self._engine = engine
        if not limits.max_concurrent:  # auto: room for the live sessions it can keep up
            limits = replace(limits, max_concurrent=max(4, engine.live_capacity))
        self._limits = limits
        self._metrics = metrics
        self._live_sessions = 0  # live sessions running (event loop only)
        self._executor = ThreadPoolExecutor(limits.max_concurrent, thread_name_prefix="generate")
        # Generations running per engine (by id), and swapped-out engines waiting for theirs
        # to finish before they are closed. Touched on the event loop only.
        self._uses: dict[int, int] = {}
        self._retiring: dict[int, Engine] = {}

    # --- helpers -------------------------------------------------------------------------
    @property
    def _active(self) -> int:
        """Generations running (the slots in use), on any engine."""
        return sum(self._uses.values())

    async def _admit(
        self,
        spec: pb.GenerationSpec,
        rpc: str,
        context: grpc.aio.ServicerContext,
        open_ended: bool = False,
    ) -> _Run:
        engine = self._engine  # a reload swaps self._engine; this request keeps its own
        try:
            params = validate(
                raw_request(spec), engine.model, self._limits, secrets.randbits(63), open_ended
            )
        except InvalidRequest as exc:
            self._metrics.rejected.labels("invalid_argument").inc()
            self._metrics.requests.labels(rpc, _mode_label(spec), "INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises
        if self._active >= self._limits.max_concurrent:
            self._metrics.rejected.labels("resource_exhausted").inc()
            self._metrics.requests.labels(rpc, params.mode.value, "RESOURCE_EXHAUSTED").inc()
            context.set_trailing_metadata((("retry-after-ms", str(RETRY_AFTER_MS)),))
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server is busy: {self._active} of {self._limits.max_concurrent} generations "
                f"running; retry after {RETRY_AFTER_MS} ms",
            )
        self._uses[id(engine)] = self._uses.get(id(engine), 0) + 1
        self._metrics.active.labels(rpc).inc()
        return _Run(params, engine, rpc, time.perf_counter(), PipelineStats())

    @contextmanager
    def _accounting(self, run: _Run) -> Iterator[None]:
        """Free the slot and record the outcome, however the generation ends."""
        status = "OK"
        try:
            yield
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except _Abort as exc:
            status = exc.code.name
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            self._release(run.engine)
            mode = run.params.mode.value
            self._metrics.active.labels(run.rpc).dec()
            self._metrics.requests.labels(run.rpc, mode, status).inc()
            if status == "OK":
                self._metrics.latency.labels(run.rpc, mode).observe(
                    time.perf_counter() - run.started
                )

    def _first_audio(self, run: _Run) -> None:
        if run.first_audio is None:
            run.first_audio = time.perf_counter() - run.started
            self._metrics.first_audio.labels(run.rpc, run.params.mode.value).observe(
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
        if request.container not in (pb.CONTAINER_UNSPECIFIED, pb.CONTAINER_RAW, pb.CONTAINER_WAV):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"container: unknown value {request.container}; use RAW or WAV",
            )
        run = await self._admit(request.spec, "Generate", context)
        try:
            with self._accounting(run):
                blocks = [b async for b in self._blocks(run)]
        except _Abort as exc:
            await context.abort(exc.code, exc.details)
        audio = np.concatenate(blocks, axis=1)
        p = run.params
        container = pb.CONTAINER_WAV if request.container == pb.CONTAINER_WAV else pb.CONTAINER_RAW
        data = (
            wav_bytes(audio, p.sample_rate, p.encoding)
            if container == pb.CONTAINER_WAV
            else encode(audio, p.encoding)
        )
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
        p = run.params
        try:
            with self._accounting(run):
                yield pb.GenerateStreamResponse(
                    header=pb.StreamHeader(format=run.audio_format(pb.CONTAINER_RAW), seed=p.seed)
                )
                offset = 0
                sequence = 0
                async for block in self._blocks(run):
                    yield pb.GenerateStreamResponse(
                        audio=pb.AudioChunk(
                            sequence=sequence,
                            sample_offset=offset,
                            num_samples=block.shape[1],
                            data=encode(block, p.encoding),
                        )
                    )
                    offset += block.shape[1]
                    sequence += 1
                yield pb.GenerateStreamResponse(end=pb.StreamEnd(stats=run.stats_message()))
        except _Abort as exc:
            await context.abort(exc.code, exc.details)

    async def GenerateLive(
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
            self._metrics.rejected.labels("invalid_argument").inc()
            self._metrics.requests.labels("GenerateLive", "unknown", "INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        capacity = self._engine.live_capacity
        if capacity and self._live_sessions >= capacity:
            self._metrics.rejected.labels("live_capacity").inc()
            self._metrics.requests.labels(
                "GenerateLive", _mode_label(start.spec), "RESOURCE_EXHAUSTED"
            ).inc()
            context.set_trailing_metadata((("retry-after-ms", str(RETRY_AFTER_MS)),))
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"server at live capacity: {self._live_sessions} live sessions is what it "
                "keeps in real time (measured vocoder step cost); retry after "
                f"{RETRY_AFTER_MS} ms or use another replica",
            )
        run = await self._admit(start.spec, "GenerateLive", context, open_ended=True)
        self._live_sessions += 1
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
            self._live_sessions -= 1
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
        why it ended (``StreamEnd.reason``)."""
        p, model = run.params, run.engine.model
        loop = asyncio.get_running_loop()
        header = pb.StreamHeader(format=run.audio_format(pb.CONTAINER_RAW), seed=p.seed)
        header.format.total_samples = 0  # open-ended
        await self._send(context, pb.GenerateLiveResponse(header=header))
        sequence = last_control = 0
        reason = ""
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
                    self._metrics.rejected.labels("invalid_argument").inc()
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
            await self._send(
                context,
                pb.GenerateLiveResponse(
                    audio=pb.AudioChunk(
                        sequence=sequence,
                        sample_offset=session.samples - n,
                        num_samples=n,
                        data=encode(block.audio, p.encoding),
                        control_sequence=block.control_sequence,
                    )
                ),
            )
            pacer.sent(n / p.sample_rate, time.perf_counter())
            sequence += 1
            if reason:
                break
        await self._send(
            context,
            pb.GenerateLiveResponse(end=pb.StreamEnd(stats=run.stats_message(), reason=reason)),
        )
        return reason

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
        model = self._engine.model
        sliders = []
        if model.sliders is not None:
            s = model.sliders
            sliders = [
                pb.Slider(
                    index=i, label=label, min_position=-s.max_position, max_position=s.max_position
                )
                for i, label in enumerate(s.labels)
            ]
        bundle = self._engine.bundle
        return pb.GetModelInfoResponse(
            latent_dim=model.latent_dim,
            sliders=sliders,
            sample_rates=list(model.sample_rates),
            default_sample_rate=model.vocoder_rate,
            encodings=list(ENCODING_ENUM.values()),
            containers=[pb.CONTAINER_RAW, pb.CONTAINER_WAV],
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
            execution_provider=self._engine.primary_provider,
            native_chunk_duration_s=model.chunk_duration_s,
            bundle_format_version=int(bundle.manifest["format_version"]),
            vocoder_precision=self._engine.vocoder_precision,
            provider_note=self._engine.provider_note,
            vocoder_path=self._engine.vocoder_path,
            live_capacity=self._engine.live_capacity,
        )

    def swap_engine(self, engine: Engine) -> None:
        """Serve new requests with ``engine``; requests in flight finish on the old one, which
        is closed (device thread and retry timer stopped) when the last of them ends."""
        old, self._engine = self._engine, engine
        if old is engine:
            return
        if self._uses.get(id(old)):
            self._retiring[id(old)] = old
        else:
            old.close()

    def _release(self, engine: Engine) -> None:
        left = self._uses[id(engine)] - 1
        if left:
            self._uses[id(engine)] = left
            return
        del self._uses[id(engine)]
        retired = self._retiring.pop(id(engine), None)
        if retired is not None:
            retired.close()

    @property
    def engine(self) -> Engine:
        return self._engine

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


def _mode_label(spec: Any) -> str:
    return MODES[spec.mode].value if spec.mode in MODES else "unknown"
