"""The gRPC servicer: each RPC turns its message into plain params (``convert.py``), is
admitted (``admission.py``), runs the pipeline in worker threads and turns blocks into
messages. The live RPC's loop is ``live_rpc.py``.

Concurrency: the servicer runs on one asyncio loop (admission's state is only touched there);
pipeline steps run in ``_executor`` threads.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import numpy as np

from distill_serve.server.api.admission import Abort, Admission, Internal, Run
from distill_serve.server.api.audio_out import chunk_coder, code, code_end, whole
from distill_serve.server.api.convert import (
    CONTAINER_ENUM,
    ENCODING_ENUM,
    audio_chunk,
    container_of,
    mode_label,
    model_card,
    model_status,
    sliders,
)
from distill_serve.server.api.live_rpc import LiveRpc, abort_unless_gone
from distill_serve.server.api.memory import Trimmer
from distill_serve.server.api.send_budget import SendBudget
from distill_serve.server.api.start_gate import StartGate
from distill_serve.server.models.metrics import Metrics
from distill_serve.server.models.repository import ModelRepository, RepositoryFull, UnknownModel
from distill_serve.server.pipeline.generate import rendered_blocks
from distill_serve.server.pipeline.request import InvalidRequest, Limits
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: Worker threads of a server whose --max-concurrent is automatic (made only when needed).
AUTO_WORKERS = 64


class DistillServicer(pb_grpc.DistillServiceServicer):
    """The Distill RPCs over a :class:`ModelRepository` (one model or many)."""

    def __init__(
        self,
        models: ModelRepository,
        limits: Limits,
        metrics: Metrics,
        trimmer: Trimmer | None = None,
    ) -> None:
        self._models = models
        auto = not limits.max_concurrent
        if auto:  # room for the live sessions it can keep up, as their capacity follows serving
            capacity = sum(e.engine.live_capacity for e in models.entries() if e.engine)
            limits = replace(limits, max_concurrent=max(4, capacity))
        self._limits = limits
        self._admission = Admission(models, limits, metrics, trimmer, auto_concurrent=auto)
        # threads are made as needed: an automatic limit may grow past the figure at start
        workers = max(limits.max_concurrent, AUTO_WORKERS if auto else 0)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="generate")
        # live sessions in their costly start-up at once: one per core (the step runners)
        self._live = LiveRpc(self._admission, self._executor, StartGate(os.cpu_count() or 1))

    async def _blocks(self, run: Run) -> AsyncIterator[np.ndarray]:
        """Pipeline blocks, each computed in a worker thread; stops when cancelled."""
        gen = rendered_blocks(run.engine.runner(), run.engine.model, run.params, run.stats)
        loop = asyncio.get_running_loop()
        try:
            while (
                block := await loop.run_in_executor(self._executor, next, gen, None)
            ) is not None:
                run.ran_on(block.provider, block.fallbacks)
                self._admission.first_audio(run)
                yield block.audio
        except Exception as exc:
            log.exception("generation failed")
            raise Internal(f"generation failed: {type(exc).__name__}: {exc}") from exc

    # --- RPCs ----------------------------------------------------------------------------
    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        try:
            container = container_of(request)
        except InvalidRequest as exc:
            spec = request.spec
            await self._admission.refuse_invalid(
                context, spec.model, "Generate", mode_label(spec), exc
            )
        run = await self._admission.admit(request.spec, "Generate", context)
        try:
            with self._admission.accounting(run, context):
                blocks = [b async for b in self._blocks(run)]
        except Abort as exc:
            await context.abort(exc.code, exc.details)
        audio = np.concatenate(blocks, axis=1)
        data = await asyncio.to_thread(whole, audio, run.params, container, run.tags())
        return pb.GenerateResponse(
            audio=data,
            format=run.audio_format(container),
            seed=run.params.seed,
            stats=run.stats_message(),
        )

    # Written through the context (grpc.aio takes a coroutine that returns None), so that
    # each write runs within the send budget.
    async def GenerateStream(  # type: ignore[override]
        self, request: pb.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> None:
        run = await self._admission.admit(request.spec, "GenerateStream", context)
        budget = SendBudget(self._admission.limits.send_budget_s)
        rate = run.params.sample_rate
        try:
            with self._admission.accounting(run, context):
                coder = chunk_coder(run.params)
                await budget.send(
                    context, pb.GenerateStreamResponse(header=run.stream_header(coder))
                )
                offset = sequence = 0
                async for block in self._blocks(run):
                    coded = await code(coder, block)
                    chunk = audio_chunk(coded, sequence, offset)
                    msg = pb.GenerateStreamResponse(audio=chunk)
                    await budget.send(context, msg, coded.frames / rate)
                    offset += coded.frames
                    sequence += 1
                if (coded_end := await code_end(coder)) is not None:
                    chunk = audio_chunk(coded_end, sequence, offset)
                    msg = pb.GenerateStreamResponse(audio=chunk)
                    await budget.send(context, msg, coded_end.frames / rate)
                end = pb.StreamEnd(stats=run.stats_message())
                await budget.send(context, pb.GenerateStreamResponse(end=end))
        except Abort as exc:
            log.info("stream ended: %s: %s", exc.code.name, exc.details)
            await abort_unless_gone(context, exc)

    # The stubs type a bidi handler as returning an iterator; grpc.aio also takes one that
    # writes with ``context.write`` and returns None (this one: it paces its writes).
    async def GenerateLive(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[pb.GenerateLiveRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await self._live(request_iterator, context)

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        lease = await self._admission.lease(request.model, context, "GetModelInfo", "none", False)
        self._models.release(lease)  # info needs the engine loaded, not held
        engine, name, limits = lease.engine, lease.entry.name, self._limits
        model, bundle = engine.model, engine.bundle
        return pb.GetModelInfoResponse(
            latent_dim=model.latent_dim,
            sliders=sliders(model),
            sample_rates=list(model.sample_rates),
            default_sample_rate=model.default_sample_rate,
            encodings=list(ENCODING_ENUM.values()),
            containers=list(CONTAINER_ENUM.values()),
            limits=pb.Limits(
                max_duration_s=limits.max_duration_s,
                max_concurrent_generations=self._admission.max_concurrent,
                max_steps_between=limits.max_steps_between,
                min_chunk_duration_s=model.min_chunk_duration_s,
                max_chunk_duration_s=model.max_chunk_duration_s,
                max_live_s=limits.max_live_s,
                live_idle_timeout_s=limits.live_idle_timeout_s,
                send_budget_s=limits.send_budget_s,
                min_lookahead_s=limits.min_lookahead_s,
                max_lookahead_s=limits.max_lookahead_s,
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
            card=model_card(bundle.manifest),
            vocoder=str(bundle.manifest["vocoder"].get("family", "")),
            vocoder_choice=str(bundle.manifest["vocoder"].get("chosen", "")),
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        default = self._models.default_name
        return pb.ListModelsResponse(
            models=[model_status(e, default) for e in self._models.entries()],
            default_model=default,
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
        return pb.LoadModelResponse(model=model_status(entry, self._models.default_name))

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
        return pb.UnloadModelResponse(model=model_status(entry, self._models.default_name))

    @property
    def models(self) -> ModelRepository:
        return self._models

    async def drain(self, grace_s: float) -> bool:
        """Refuse new generations (UNAVAILABLE) and wait up to ``grace_s`` for the running
        ones to end; whether they all did."""
        self._admission.draining = True
        return await self._admission.drained(grace_s)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


async def _require_name(name: str, context: grpc.aio.ServicerContext) -> None:
    """Model control names its model: an empty name (the default model elsewhere) is
    refused rather than read as "the default"."""
    if not name:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, "name: give the model's name (see ListModels)"
        )
