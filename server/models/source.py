"""Where a server's models come from (light: no engine import, for option parsing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSource:
    """Where a server's models come from.

    Attributes:
        bundle: one bundle dir, served as the model ``name``; None (and no ``models_dir``):
            the cached demo bundle.
        models_dir: a model repository (one bundle per subdirectory); replaces ``bundle``.
        name: the one bundle's model name.
        default_model: the model of requests that name none (None: the repository's first
            by name).
        max_loaded: most models loaded at once (0: no limit; LRU eviction).
        grace_s: how long an unload lets in-flight generations run on.
    """

    bundle: Path | None = None
    models_dir: Path | None = None
    name: str = "demo"
    default_model: str | None = None
    max_loaded: int = 0
    grace_s: float = 10.0
