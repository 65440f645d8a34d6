"""The live RPC (``GenerateLive``): a session's blocks paced to real time, its controls
applied between blocks, its costly first blocks behind the start gate.

Concurrency: the loop runs on the server's event loop; the session's steps (controls and
blocks) run one at a time in the executor's threads, so its state needs no lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor

import grpc

from distill_serve.server.api.admission import Abort, Admission, Run
from distill_serve.server.api.audio_out import chunk_coder, code, code_last
from distill_serve.server.api.convert import audio_chunk, raw_control, raw_request
from distill_serve.server.api.send_budget import SendBudget
from distill_serve.server.api.start_gate import StartGate
from distill_serve.server.pipeline.controls import ControlMailbox, Refusal
from distill_serve.server.pipeline.live import (
    LiveBlock,
    LiveSession,
    Pacer,
    check_lookahead,
    check_playout_delay,
)
from distill_serve.server.pipeline.request import InvalidRequest, check_slider_positions
from distill_serve.server.pipeline.timeline import (
    PositionRefused,
    TimelineSession,
    check_start_position,
)
from distill_serve.v1 import distill_pb2 as pb

log = logging.getLogger(__name__)

#: An unpaced session's steps are due this long after they are asked for: a live session's
#: (due when its audio runs out, within its lookahead) go first.
UNPACED_DUE_S = 1.0


class LiveRpc:
    """Serves ``GenerateLive`` calls with the servicer's admission, executor and start gate."""

    def __init__(self, admission: Admission, executor: Executor, start_gate: StartGate) -> None:
        self._admission = admission
        self._executor = executor
        self._start_gate = start_gate

    async def __call__(
        self,
        request_iterator: AsyncIterator[pb.GenerateLiveRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        admission = self._admission
        requests = aiter(request_iterator)
        first: pb.GenerateLiveRequest | None = None
        try:
            first = await anext(requests, None)
            if first is None or first.WhichOneof("kind") != "start":
                raise InvalidRequest(
                    "start", "the first GenerateLiveRequest must carry a LiveStart"
                )
            start = first.start
            lookahead = check_lookahead(
                start.lookahead_s if start.HasField("lookahead_s") else None, admission.limits
            )
            delay = check_playout_delay(
                start.playout_delay_s if start.HasField("playout_delay_s") else None
            )
        except InvalidRequest as exc:
            model = first.start.spec.model if first is not None else ""
            await admission.refuse_invalid(context, model, "GenerateLive", "unknown", exc)
        run = await admission.admit(start.spec, "GenerateLive", context, open_ended=True)
        reader: asyncio.Task[None] | None = None
        try:
            with admission.accounting(run, context):  # the end is logged before the slot is freed
                session = self._session(run, start, lookahead)
                timeline = isinstance(session, TimelineSession)
                controls = ControlMailbox(run.engine.model, run.params, ordered=timeline)
                reader = asyncio.create_task(_read_controls(requests, controls))
                playout = time.perf_counter() + delay if delay else None
                pacer = None if start.unpaced else Pacer(lookahead, playout)
                try:
                    reason = await self._play(run, session, pacer, controls, context)
                except asyncio.CancelledError:
                    if run.lease.revoked:
                        log.info("live session ended: %s", run.lease.revoked)
                        raise  # accounting turns it into UNAVAILABLE
                    why = {
                        "DEADLINE_EXCEEDED": "its deadline passed",
                        "UNAVAILABLE": "the server's drain ended it",
                    }.get(admission.cancel_status(context), "cancelled by the client")
                    log.info("live session ended: %s after %.1f s", why, session.seconds)
                    raise
                except Abort as exc:
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
        except Abort as exc:
            await abort_unless_gone(context, exc)
        finally:
            if reader is not None:
                reader.cancel()

    def _session(self, run: Run, start: pb.LiveStart, lookahead: float) -> LiveSession:
        """The session ``start`` asks for: a timeline session when it names a position."""
        positions = raw_request(start.spec).slider_positions
        model = run.engine.model
        sliders = check_slider_positions(positions, model) if positions else None
        if not start.HasField("start_position"):
            runner = run.engine.runner()
            return LiveSession(runner, model, run.params, lookahead, sliders, run.stats)
        try:
            at = check_start_position(start.start_position, run.params, self._admission.limits)
        except InvalidRequest as exc:
            self._admission.metrics.rejected.labels(run.model, "invalid_argument").inc()
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        return TimelineSession(
            run.engine.runner(), model, run.params, lookahead, at, sliders, run.stats
        )

    async def _play(
        self,
        run: Run,
        session: LiveSession,
        pacer: Pacer | None,
        controls: ControlMailbox,
        context: grpc.aio.ServicerContext,
    ) -> str:
        """Blocks paced to real time, controls applied between blocks, until the end; returns
        why it ended (``StreamEnd.reason``). Its costly first blocks wait for a start slot
        (start_gate.py)."""
        p = run.params
        loop = asyncio.get_running_loop()
        coder = chunk_coder(p)
        header = run.stream_header(coder)
        header.format.total_samples = 0  # open-ended
        limits = self._admission.limits
        budget = SendBudget(limits.send_budget_s, write_cap_s=limits.live_idle_timeout_s)
        await budget.send(context, pb.GenerateLiveResponse(header=header))
        sequence = offset = 0
        reason = ""
        ticket = await self._start_gate.enter(session.startup_blocks)
        try:
            while True:
                if not reason:
                    reason = self._take_control(run, session, controls)
                for refusal in controls.take_refusals():
                    refused = pb.ControlRefused(
                        sequence=refusal.sequence, code=refusal.code, message=refusal.message
                    )
                    await budget.send(context, pb.GenerateLiveResponse(refused=refused))
                if not reason and session.seconds >= self._admission.limits.max_live_s:
                    reason = "max_live_duration"
                if not reason and pacer and (delay := pacer.delay(time.perf_counter())) > 0:
                    await asyncio.sleep(delay)
                    continue  # controls that came in meanwhile go into the next block
                step = session.finish if reason else session.next_block
                # its steps are needed when the audio sent so far runs out for the listener
                # (unpaced: due after the live sessions' steps)
                ahead = pacer.underrun_in(time.perf_counter()) if pacer else UNPACED_DUE_S
                deadline = time.monotonic() + ahead
                try:
                    block: LiveBlock = await loop.run_in_executor(self._executor, step, deadline)
                except Exception as exc:
                    log.exception("live generation failed")
                    raise Abort(
                        grpc.StatusCode.INTERNAL, f"generation failed: {type(exc).__name__}: {exc}"
                    ) from exc
                run.ran_on(block.provider, block.fallbacks)
                self._admission.first_audio(run)
                n = block.audio.shape[1]
                # the last (fade-out) block carries the codec's end too: one block, as with PCM
                coded = await (code_last if reason else code)(coder, block.audio)
                chunk = audio_chunk(coded, sequence, offset, block.control_sequence, block.position)
                audio_s = coded.frames / p.sample_rate
                await budget.send(context, pb.GenerateLiveResponse(audio=chunk), audio_s)
                if pacer is not None:
                    self._continuity(run.model, pacer, time.perf_counter())
                    pacer.sent(n / p.sample_rate, time.perf_counter())
                ticket.block_sent()
                offset += coded.frames
                sequence += 1
                if reason:
                    break
                if isinstance(session, TimelineSession) and session.stop_due:
                    reason = "stop"
            end = pb.StreamEnd(stats=run.stats_message(), reason=reason)
            await budget.send(context, pb.GenerateLiveResponse(end=end))
            return reason
        finally:
            ticket.close()

    def _continuity(self, model: str, pacer: Pacer, now: float) -> None:
        """Record how a paced block went out against its playout time (metrics.py)."""
        metrics = self._admission.metrics
        if pacer.last_sent is not None:
            metrics.live_interval.labels(model).observe(now - pacer.last_sent)
            ahead = pacer.ahead(now)
            metrics.live_ahead.labels(model).observe(max(0.0, ahead))
            if ahead < 0:
                metrics.live_late_blocks.labels(model).inc()
                metrics.live_late_seconds.labels(model).inc(-ahead)

    def _take_control(self, run: Run, session: LiveSession, controls: ControlMailbox) -> str:
        """Apply the mailbox's (merged) control; why the session ends, if it does ("")."""
        if controls.error is not None:
            self._admission.metrics.rejected.labels(run.model, "invalid_argument").inc()
            raise Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"live control after sequence {controls.last_sequence}: {controls.error}",
            )
        if isinstance(session, TimelineSession):
            for control in controls.take_all():
                try:
                    session.schedule(control, control.position)
                except PositionRefused as exc:
                    controls.refusals.append(Refusal(control.sequence, exc.code, str(exc)))
                    continue
                if control.stop and control.position is None:
                    return "stop"
            return "client_closed" if controls.closed else ""
        control = controls.take()
        if control is not None:
            session.apply(control)
            if control.stop:
                return "stop"
        return "client_closed" if controls.closed else ""


async def abort_unless_gone(context: grpc.aio.ServicerContext, exc: Abort) -> None:
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
    requests: AsyncIterator[pb.GenerateLiveRequest], mailbox: ControlMailbox
) -> None:
    """Read a live session's controls as fast as they come into its mailbox, which merges
    them (so a flood is read, not left in the transport ahead of ``stop``); the first
    refused message ends the reading."""
    try:
        async for msg in requests:
            if msg.WhichOneof("kind") != "control":
                raise InvalidRequest("start", "send LiveStart once, first; then only controls")
            mailbox.put(raw_control(msg.control))
        mailbox.closed = True
    except InvalidRequest as exc:
        mailbox.error = exc
