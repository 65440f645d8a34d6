"""A live session's mailbox: controls that arrive faster than blocks are merged into one, as
a fader's moves are, so a flood of them costs one control per block and never delays
``stop``.

Each control is checked as it arrives (its sequence against the last one, its values
against the model and the session), so a bad one is refused whenever it comes; the merged
control leaves the session where applying the controls one by one would (the last value of
each field, the slider moves all taken, ``stop`` kept), only the glides in between are
skipped.

A timeline session's controls each take effect at their own position, so its mailbox
(``ordered``) keeps them all, in order, up to :data:`MAX_WAITING`; a control with a position
on a session opened without one is refused there and then (``refusals``), and the session
plays on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from distill_serve.server.pipeline.live import LiveControl, RawControl, check_control
from distill_serve.server.pipeline.model import ModelSpec
from distill_serve.server.pipeline.request import GenerationParams, InvalidRequest

#: Controls an ordered mailbox holds between two blocks, at most.
MAX_WAITING = 256


@dataclass(frozen=True)
class Refusal:
    """A control not taken (the session plays on): its sequence, a gRPC status name, why."""

    sequence: int
    code: str
    message: str


def merge(first: LiveControl, then: LiveControl) -> LiveControl:
    """One control with the effect of ``first`` followed by ``then``."""
    sliders = first.sliders
    if then.sliders is not None:
        sliders = {**(sliders or {}), **then.sliders}
    latent, latent_last = first.latent, first.latent_last and first.latent is not None
    if then.latent is not None:
        latent, latent_last = then.latent, True
    elif then.sliders is not None:
        latent_last = False
    sets = then.latent is not None or then.sliders is not None
    sets = sets or then.evolution_amount is not None or then.stereo_width is not None
    return replace(
        then,
        latent=latent,
        sliders=sliders,
        latent_last=latent_last,
        evolution_amount=then.evolution_amount
        if then.evolution_amount is not None
        else first.evolution_amount,
        stereo_width=then.stereo_width if then.stereo_width is not None else first.stereo_width,
        transition_s=then.transition_s if sets else first.transition_s,
        stop=first.stop or then.stop,
    )


class ControlMailbox:
    """Holds at most one (merged) control between blocks; see the module's docstring."""

    def __init__(self, model: ModelSpec, params: GenerationParams, ordered: bool = False) -> None:
        self._model, self._params = model, params
        self._ordered = ordered
        self._pending: LiveControl | None = None
        self._waiting: list[LiveControl] = []
        #: controls refused without ending the session, not yet reported
        self.refusals: list[Refusal] = []
        self.last_sequence = 0
        #: the first control that was refused (the session ends with it)
        self.error: InvalidRequest | None = None
        #: the client half-closed its requests
        self.closed = False
        #: controls merged into others so far
        self.merged = 0

    def put(self, raw: RawControl) -> None:
        """Check ``raw`` and merge it into the pending control; InvalidRequest when refused."""
        control = check_control(raw, self._model, self._params, self.last_sequence)
        self.last_sequence = control.sequence
        if self._ordered:
            if len(self._waiting) >= MAX_WAITING:
                self.refusals.append(
                    Refusal(
                        control.sequence,
                        "RESOURCE_EXHAUSTED",
                        f"{MAX_WAITING} controls are waiting for the next block; send fewer",
                    )
                )
            else:
                self._waiting.append(control)
            return
        if control.position is not None:
            self.refusals.append(
                Refusal(
                    control.sequence,
                    "INVALID_ARGUMENT",
                    "a position needs a timeline session (LiveStart.start_position)",
                )
            )
            return
        if self._pending is None:
            self._pending = control
        else:
            self._pending = merge(self._pending, control)
            self.merged += 1

    def take(self) -> LiveControl | None:
        """The pending control (None: none came since the last take)."""
        control, self._pending = self._pending, None
        return control

    def take_all(self) -> list[LiveControl]:
        """An ordered mailbox's controls, in the order they came."""
        controls, self._waiting = self._waiting, []
        return controls

    def take_refusals(self) -> list[Refusal]:
        """The refusals not reported yet."""
        refusals, self.refusals = self.refusals, []
        return refusals
