"""Latent trajectories for each chunk mode (DESIGN section 1), as pure numpy."""

from __future__ import annotations

import numpy as np

from distill_serve.geometry import ChunkPlan
from distill_serve.server.request import ChunkMode

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


def random_anchors(seed: int, count: int, dim: int) -> np.ndarray:
    """``max(2, count)`` standard-normal anchors from ``seed``, shape ``(N, D)``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((max(2, count), dim)).astype(np.float32)


def drifting_anchors(start: np.ndarray, seed: int, count: int, evolution: float) -> np.ndarray:
    """Slider mode: anchor 0 is ``start``; each next one moves toward a random target by
    ``evolution`` (0 keeps it static). Targets have the start's norm. Shape ``(N, D)``."""
    rng = np.random.default_rng(seed)
    anchors = [start.astype(np.float32)]
    norm = float(np.linalg.norm(start)) or float(np.sqrt(start.size))
    for _ in range(max(1, count) - 1):
        target = rng.standard_normal(start.size)
        target *= norm / np.linalg.norm(target)
        anchors.append(slerp(anchors[-1], target.astype(np.float32), evolution))
    return np.stack(anchors)


def trajectory(
    mode: ChunkMode,
    plan: ChunkPlan,
    seed: int,
    dim: int,
    start: np.ndarray | None = None,
    evolution: float = 0.0,
    steps_between: int = 0,
) -> np.ndarray:
    """One latent per chunk of ``plan``, shape ``(plan.steps, D)``.

    - crossfade: one random anchor per chunk; the overlap-add does the crossfade.
    - latent_interp: random anchors per hop, ``steps_between`` SLERP points in between.
    - slider: anchors drift from ``start`` by ``evolution``, one per chunk.
    """
    sub = steps_between + 1
    hops = (plan.steps - 1) // sub + 1  # chunks at full-hop spacing
    if mode is ChunkMode.SLIDER:
        if start is None:
            raise ValueError("slider mode needs a start latent")
        return drifting_anchors(start, seed, plan.steps, evolution)
    anchors = random_anchors(seed, hops, dim)
    if mode is ChunkMode.CROSSFADE or sub == 1:
        return anchors[: plan.steps]
    out = []
    for k in range(plan.steps):
        i, r = divmod(k, sub)
        out.append(anchors[i] if r == 0 else slerp(anchors[i], anchors[i + 1], r / sub))
    return np.stack(out)
