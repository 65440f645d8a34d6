"""Latent trajectories for each chunk mode (DESIGN section 1), as pure numpy.

:class:`LatentPath` makes a trajectory one chunk at a time, open-ended, and can be steered
while it runs (live sessions). A fixed-length request takes the first ``plan.steps`` latents
of the same path (:func:`trajectory`), so a live session that is never steered follows exactly
the trajectory of a request of any length with the same settings.
"""

from __future__ import annotations

import numpy as np

from distill_serve.geometry import ChunkPlan
from distill_serve.server.pipeline.request import ChunkMode

LERP_DOT = 0.9995


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1), shape ``(D,)``.

    Falls back to linear interpolation when the directions are nearly equal
    (normalised dot product > 0.9995), where SLERP is numerically unstable.
    """
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0.0 or nb == 0.0:
        return ((1 - t) * a64 + t * b64).astype(np.float32)
    dot = float(np.clip(np.dot(a64 / na, b64 / nb), -1.0, 1.0))
    if dot > LERP_DOT:
        return ((1 - t) * a64 + t * b64).astype(np.float32)
    omega = np.arccos(dot)
    so = np.sin(omega)
    return (np.sin((1 - t) * omega) / so * a64 + np.sin(t * omega) / so * b64).astype(np.float32)


class _Drift:
    """Slider-mode anchors: ``start``, then each one moves toward a random target (with the
    start's norm) by ``evolution``. Anchor ``k`` comes from the ``k``-th call of :meth:`next`."""

    def __init__(self, start: np.ndarray, rng: np.random.Generator, evolution: float) -> None:
        self.anchor = start.astype(np.float32)
        self.evolution = evolution
        self._rng = rng
        self._norm = float(np.linalg.norm(start)) or float(np.sqrt(start.size))
        self._started = False

    def next(self) -> np.ndarray:
        if self._started:
            target = self._rng.standard_normal(self.anchor.size)
            target *= self._norm / np.linalg.norm(target)
            self.anchor = slerp(self.anchor, target.astype(np.float32), self.evolution)
        self._started = True
        return self.anchor


class LatentPath:
    """One latent per decoded chunk, open-ended, for one seed.

    - crossfade: one standard-normal anchor per chunk;
    - latent_interp: anchors every ``steps_between + 1`` chunks, SLERP points in between;
    - slider: :class:`_Drift` from ``start`` by ``evolution``.

    :meth:`steer` bends the path toward a new target (any mode): the next ``glide_chunks``
    latents SLERP from where the path is toward a drift that starts at the target.
    """

    def __init__(
        self,
        mode: ChunkMode,
        seed: int,
        dim: int,
        start: np.ndarray | None = None,
        evolution: float = 0.0,
        steps_between: int = 0,
    ) -> None:
        self.seed = seed
        self.evolution = evolution
        self._mode = mode
        self._dim = dim
        self._sub = steps_between + 1 if mode is ChunkMode.LATENT_INTERP else 1
        self._rng = np.random.default_rng(seed)
        self._k = 0
        self._pair: list[np.ndarray] = []
        self._drift: _Drift | None = None
        self._glide: tuple[np.ndarray, int, int] | None = None  # (from, chunks, done)
        #: the last latent :meth:`next` returned (None before the first)
        self.current: np.ndarray | None = None
        if mode is ChunkMode.SLIDER:
            if start is None:
                raise ValueError("slider mode needs a start latent")
            self._drift = _Drift(start, self._rng, evolution)

    def _anchor(self) -> np.ndarray:
        return self._rng.standard_normal(self._dim).astype(np.float32)

    def _unsteered(self) -> np.ndarray:
        i, r = divmod(self._k, self._sub)
        if not self._pair:
            self._pair = [self._anchor()]
        if r == 0 and i > 0:
            self._pair = self._pair[1:] or [self._anchor()]
        if r == 0:
            return self._pair[0]
        if len(self._pair) == 1:
            self._pair.append(self._anchor())
        return slerp(self._pair[0], self._pair[1], r / self._sub)

    def next(self) -> np.ndarray:
        """The next chunk's latent, ``(D,)`` float32."""
        z = self._drift.next() if self._drift is not None else self._unsteered()
        if self._glide is not None:
            origin, chunks, done = self._glide
            done += 1
            z = slerp(origin, z, min(1.0, done / chunks))
            self._glide = None if done >= chunks else (origin, chunks, done)
        self._k += 1
        self.current = z
        return z

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` latents, ``(count, D)``."""
        return np.stack([self.next() for _ in range(count)])

    def steer(
        self, target: np.ndarray | None, evolution: float, glide_chunks: int, salt: int
    ) -> None:
        """Bend the path: from the next chunk on, glide over ``glide_chunks`` chunks (>= 1;
        1 = arrive at once) toward a drift that starts at ``target`` and moves by
        ``evolution``; its random targets come from ``(seed, salt)``.

        ``target`` None changes only the evolution of an already steered (or slider) path.
        """
        self.evolution = evolution
        if target is None:
            if self._drift is not None:
                self._drift.evolution = evolution
            return
        if self.current is not None:
            self._glide = (self.current, max(1, glide_chunks), 0)
        rng = np.random.default_rng([self.seed, salt])
        self._drift = _Drift(target, rng, evolution)

    @property
    def steered(self) -> bool:
        """Whether the path follows a drift (slider mode, or steered once)."""
        return self._drift is not None


def drifting_anchors(start: np.ndarray, seed: int, count: int, evolution: float) -> np.ndarray:
    """Slider mode: anchor 0 is ``start``; each next one moves toward a random target by
    ``evolution`` (0 keeps it static). Targets have the start's norm. Shape ``(N, D)``."""
    drift = _Drift(start, np.random.default_rng(seed), evolution)
    return np.stack([drift.next() for _ in range(max(1, count))])


def trajectory(
    mode: ChunkMode,
    plan: ChunkPlan,
    seed: int,
    dim: int,
    start: np.ndarray | None = None,
    evolution: float = 0.0,
    steps_between: int = 0,
) -> np.ndarray:
    """One latent per chunk of ``plan``, shape ``(plan.steps, D)``: the first ``plan.steps``
    latents of :class:`LatentPath`."""
    return LatentPath(mode, seed, dim, start, evolution, steps_between).take(plan.steps)
