"""The latent trajectory of a timeline session: a pure function of the chunk index.

A timeline session (:mod:`distill_serve.server.pipeline.timeline`) addresses its audio by
position, so chunk ``m``'s latent must not depend on how playback reached ``m`` (from 0, after
a seek, in a loop, offline). :class:`TimelinePath` computes it from the seed, the mode's
settings and the *targets* in force around ``m``: each control that moves the latent (a
latent, slider moves, an evolution) starts a new target at a chunk, reached by a glide of
whole chunks from the previous target's own path, both evaluated at ``m``:

* no target (crossfade, latent_interp before any control): the mode's own anchors
  (:func:`~distill_serve.server.pipeline.trajectory.base_latent`, keyed by seed and index);
* a target: the circle around its centre at its evolution
  (:func:`~distill_serve.server.pipeline.trajectory.circle_latent`, anchors keyed by seed and
  index on one global grid, so a new centre keeps the same random directions);
* during a glide of ``g`` chunks from chunk ``c``: ``slerp(previous(m), new(m), (m - c + 1) /
  g)``.

With no control, a slider-mode path equals the fixed-length request's path chunk for chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill_serve.server.pipeline.request import ChunkMode
from distill_serve.server.pipeline.trajectory import base_latent, circle_latent, slerp


@dataclass(frozen=True)
class Target:
    """What the path does from ``chunk`` on: circle ``centre`` at ``evolution`` (``centre``
    None: the mode's own anchors), reached from the previous target over ``glide`` chunks."""

    chunk: int
    centre: np.ndarray | None
    evolution: float
    glide: int = 1


class TimelinePath:
    """Latents of chunks ``first_chunk``, ``first_chunk + 1``, ... (:meth:`next`), for one
    seed; :meth:`retarget` schedules a change at a chunk not yet made."""

    def __init__(
        self,
        mode: ChunkMode,
        seed: int,
        dim: int,
        start: np.ndarray | None,
        evolution: float,
        steps_between: int,
        anchor_chunks: int,
        first_chunk: int = 0,
    ) -> None:
        if mode is ChunkMode.SLIDER and start is None:
            raise ValueError("slider mode needs a start latent")
        self.seed = seed
        self._dim = dim
        self._sub = steps_between + 1 if mode is ChunkMode.LATENT_INTERP else 1
        self._spacing = max(1, anchor_chunks)
        centre = start if mode is ChunkMode.SLIDER else None
        self._targets = [Target(0, centre, evolution)]
        self._m = first_chunk
        #: the last latent :meth:`next` returned (None before the first)
        self.current: np.ndarray | None = None

    @property
    def next_chunk(self) -> int:
        """The chunk :meth:`next` makes next (changes start there at the earliest)."""
        return self._m

    @property
    def target(self) -> Target:
        """The last target scheduled."""
        return self._targets[-1]

    def retarget(
        self, chunk: int, centre: np.ndarray | None, evolution: float | None, glide: int
    ) -> None:
        """From ``chunk`` on, circle ``centre`` (None: the last target's) at ``evolution``
        (None: the last target's), gliding over ``glide`` chunks (>= 1; 1 = at once). Chunks
        must come in order and not before :attr:`next_chunk`; a second change at the same
        chunk replaces the first."""
        if chunk < self._m or chunk < self._targets[-1].chunk:
            raise ValueError(f"chunk {chunk} is in the past (next is {self._m})")
        last = self._targets[-1]
        if last.chunk == chunk and len(self._targets) > 1:
            self._targets.pop()
        new_centre = centre if centre is not None else last.centre
        if new_centre is None:  # an evolution alone on an unsteered path: nothing to circle
            return
        new_evolution = last.evolution if evolution is None else evolution
        self._targets.append(Target(chunk, new_centre, new_evolution, max(1, glide)))

    def _value(self, i: int, m: int) -> np.ndarray:
        target = self._targets[i]
        if target.centre is None:
            z = base_latent(self.seed, self._dim, self._sub, m)
        else:
            z = circle_latent(target.centre, target.evolution, (self.seed,), self._spacing, m)
        done = m - target.chunk + 1
        if i > 0 and done < target.glide:
            z = slerp(self._value(i - 1, m), z, done / target.glide)
        return z

    def latent(self, m: int) -> np.ndarray:
        """Chunk ``m``'s latent, ``(D,)`` float32 (``m`` not before the oldest target kept)."""
        i = max(j for j, t in enumerate(self._targets) if t.chunk <= m)
        return self._value(i, m)

    def next(self) -> np.ndarray:
        """The next chunk's latent."""
        z = self.latent(self._m)
        self._m += 1
        # Targets whose successor's glide is over no longer shape any chunk to come.
        while len(self._targets) > 1:
            after = self._targets[1]
            if self._m < after.chunk + after.glide - 1:
                break
            self._targets.pop(0)
        self.current = z
        return z
