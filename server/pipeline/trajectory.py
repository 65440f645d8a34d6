"""Latent trajectories for each chunk mode (DESIGN section 1), as pure numpy.

:class:`LatentPath` makes a trajectory one chunk at a time, open-ended, and can be steered
while it runs (live sessions). A fixed-length request takes the first ``plan.steps`` latents
of the same path (:func:`trajectory`), so a live session that is never steered follows exactly
the trajectory of a request of any length with the same settings.

Slider mode means what it means in the Distill app (``shared/DISTILL.md`` section 3): the
sound circles the slider latent ``z0``. Anchor 0 is ``z0``; every further anchor is
``slerp(z0, random_k, evolution)``, drawn from ``z0`` (not from the previous anchor), so the
distance to the slider setting stays bounded however long it plays; anchors lie about
:data:`ANCHOR_S` of audio apart with SLERP between them. ``random_k`` is a pure function of
the seed and ``k``, not the k-th draw of a sequence; so are the anchors of crossfade and
latent_interp (:func:`base_latent`), so any chunk's latent can be computed without the chunks
before it (timeline sessions, :mod:`distill_serve.server.pipeline.timeline_path`).
"""

from __future__ import annotations

import numpy as np

from distill_serve.geometry import ChunkPlan
from distill_serve.server.pipeline.request import ChunkMode

LERP_DOT = 0.9995
#: The generator key's middle word for the anchors of crossfade and latent_interp (slider
#: circles use ``(seed, k)`` and steered ones ``(seed, salt, k)``).
BASE_KEY = 0xBA5E
#: Audio between two slider anchors, as the app spaces them (~1.5 s); in chunks: 3 of the
#: native 1 s chunks (each starts half a chunk after the last).
ANCHOR_S = 1.5
ANCHOR_CHUNKS = 3


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


def random_latent(key: tuple[int, ...], dim: int) -> np.ndarray:
    """A standard-normal latent ``(dim,)`` float32 that depends only on ``key``."""
    return np.random.default_rng(list(key)).standard_normal(dim).astype(np.float32)


def base_latent(seed: int, dim: int, sub: int, m: int) -> np.ndarray:
    """Chunk ``m``'s latent in crossfade (``sub`` 1) or latent_interp (``sub`` = steps between
    + 1): anchor ``i`` from the generator keyed ``(seed, BASE_KEY, i)`` every ``sub`` chunks,
    SLERP in between."""
    i, r = divmod(m, sub)
    first = random_latent((seed, BASE_KEY, i), dim)
    if r == 0:
        return first
    return slerp(first, random_latent((seed, BASE_KEY, i + 1), dim), r / sub)


def circle_latent(
    centre: np.ndarray, evolution: float, key: tuple[int, ...], spacing: int, m: int
) -> np.ndarray:
    """Chunk ``m``'s latent on the circle around ``centre``: anchor 0 is ``centre``, anchor
    ``k`` >= 1 is ``slerp(centre, random_k, evolution)`` with ``random_k`` keyed ``(*key, k)``,
    one anchor every ``spacing`` chunks, SLERP in between (what :class:`_Circle` makes one
    chunk after another, with the anchors cached)."""

    def anchor(k: int) -> np.ndarray:
        if k == 0:
            return centre.astype(np.float32)
        return slerp(centre, random_latent((*key, k), centre.size), evolution)

    i, r = divmod(m, max(1, spacing))
    if r == 0:
        return anchor(i)
    return slerp(anchor(i), anchor(i + 1), r / max(1, spacing))


class _Circle:
    """Slider-mode latents around ``centre``: anchor 0 is the centre, anchor ``k`` >= 1 is
    ``slerp(centre, random_k, evolution)`` with ``random_k`` standard normal from the
    generator keyed ``(*key, k)``; ``spacing`` chunks from one anchor to the next, SLERP in
    between. An anchor keeps the evolution it was made with (a change moves later ones)."""

    def __init__(
        self, centre: np.ndarray, key: tuple[int, ...], evolution: float, spacing: int
    ) -> None:
        self.centre = centre.astype(np.float32)
        self.evolution = evolution
        self._key = key
        self._spacing = max(1, spacing)
        self._anchors: dict[int, np.ndarray] = {}
        self._k = 0

    def anchor(self, k: int) -> np.ndarray:
        if k == 0:
            return self.centre
        if k not in self._anchors:
            target = random_latent((*self._key, k), self.centre.size)
            self._anchors = {i: a for i, a in self._anchors.items() if i >= k - 1}
            self._anchors[k] = slerp(self.centre, target, self.evolution)
        return self._anchors[k]

    def next(self) -> np.ndarray:
        i, r = divmod(self._k, self._spacing)
        self._k += 1
        if r == 0:
            return self.anchor(i)
        return slerp(self.anchor(i), self.anchor(i + 1), r / self._spacing)


class LatentPath:
    """One latent per decoded chunk, open-ended, for one seed.

    - crossfade: one standard-normal anchor per chunk;
    - latent_interp: anchors every ``steps_between + 1`` chunks, SLERP points in between
      (both :func:`base_latent`);
    - slider: :class:`_Circle` around ``start`` at ``evolution``, an anchor every
      ``anchor_chunks`` chunks.

    :meth:`steer` bends the path toward a new target (any mode): the next ``glide_chunks``
    latents SLERP from where the path is toward a circle around the target.
    """

    def __init__(
        self,
        mode: ChunkMode,
        seed: int,
        dim: int,
        start: np.ndarray | None = None,
        evolution: float = 0.0,
        steps_between: int = 0,
        anchor_chunks: int = ANCHOR_CHUNKS,
    ) -> None:
        self.seed = seed
        self.evolution = evolution
        self._mode = mode
        self._dim = dim
        self._sub = steps_between + 1 if mode is ChunkMode.LATENT_INTERP else 1
        self._k = 0
        self._anchor_chunks = anchor_chunks
        self._circle: _Circle | None = None
        self._glide: tuple[np.ndarray, int, int] | None = None  # (from, chunks, done)
        #: the last latent :meth:`next` returned (None before the first)
        self.current: np.ndarray | None = None
        if mode is ChunkMode.SLIDER:
            if start is None:
                raise ValueError("slider mode needs a start latent")
            self._circle = _Circle(start, (seed,), evolution, anchor_chunks)

    def _unsteered(self) -> np.ndarray:
        return base_latent(self.seed, self._dim, self._sub, self._k)

    def next(self) -> np.ndarray:
        """The next chunk's latent, ``(D,)`` float32."""
        z = self._circle.next() if self._circle is not None else self._unsteered()
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
        1 = arrive at once) toward a circle around ``target`` at ``evolution``; its random
        anchors come from ``(seed, salt, k)``.

        ``target`` None changes only the evolution of an already steered (or slider) path.
        """
        self.evolution = evolution
        if target is None:
            if self._circle is not None:
                self._circle.evolution = evolution
            return
        if self.current is not None:
            self._glide = (self.current, max(1, glide_chunks), 0)
        self._circle = _Circle(target, (self.seed, salt), evolution, self._anchor_chunks)

    @property
    def steered(self) -> bool:
        """Whether the path circles a latent (slider mode, or steered once)."""
        return self._circle is not None


def circling_anchors(start: np.ndarray, seed: int, count: int, evolution: float) -> np.ndarray:
    """Slider mode's anchors: anchor 0 is ``start``; anchor ``k`` is ``slerp(start, random_k,
    evolution)`` (0 keeps it static). Shape ``(N, D)``."""
    circle = _Circle(start, (seed,), evolution, 1)
    return np.stack([circle.next() for _ in range(max(1, count))])


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
