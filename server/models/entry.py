"""The repository's records: a model's state and entry, a generation's lease on it, the
hooks a server counts with, and what a repository directory holds on disk."""

from __future__ import annotations

import asyncio
import enum
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from distill_serve.bundle import load_bundle
from distill_serve.server.engine.engine import Engine
from distill_serve.server.pipeline.model import ModelSpec

#: Model names: a repository's directory names, as they appear in URLs and metric labels.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"


#: The longest piece of a client's own text the server repeats in a message.
MAX_ECHO = 64


def echo(text: str) -> str:
    """A client-supplied string as a message may repeat it: quoted, cut to :data:`MAX_ECHO`."""
    return repr(text[:MAX_ECHO] + ("..." if len(text) > MAX_ECHO else ""))


_PATH = re.compile(r"(?:/[^\s/:'\"()]+)+/")  # the directories of an absolute path


def client_reason(reason: str) -> str:
    """A load failure as clients may see it: the error's kind and gist with absolute paths
    cut to their file names and parser details (in parentheses) left out; the whole reason
    is in the server log."""
    if not reason:
        return ""
    short = _PATH.sub("", reason).split(" (", 1)[0]
    return (short[:160] + "...") if len(short) > 160 else short


class UnknownModel(LookupError):
    """A request named a model the repository does not have."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        names = ", ".join(sorted(known)) or "none"
        super().__init__(f"no model named {echo(name)} on this server; its models: {names}")


class ModelUnavailable(RuntimeError):
    """The model exists but cannot serve now (loading, failed, unloading, unloaded)."""


class RepositoryFull(RuntimeError):
    """No room to load a model: every loaded model has generations in flight."""


@dataclass(eq=False)
class Lease:
    """One generation's hold on a model's engine (released when the generation ends)."""

    entry: ModelEntry
    engine: Engine
    live: bool
    task: asyncio.Task[object] | None
    #: why the repository cancelled this generation ("" while it may run)
    revoked: str = ""


@dataclass(eq=False)
class ModelEntry:
    """One model of the repository and where it stands."""

    name: str
    root: Path
    state: ModelState = ModelState.UNLOADED
    reason: str = ""
    engine: Engine | None = None
    version: str = ""
    #: the bundle on disk at the last load attempt (manifest id and mtime): a rescan reloads
    #: the model when it changes
    disk_id: str = ""
    #: read from the manifest without loading (ListModels shows rates and sliders of models
    #: that are not loaded)
    spec: ModelSpec | None = None
    vocoder: str = ""
    leases: set[Lease] = field(default_factory=set)
    last_used: float = 0.0
    #: False after an operator's unload: requests do not load it back on demand
    on_demand: bool = True
    #: engines swapped out by a reload, closed when their last lease ends
    retiring: list[Engine] = field(default_factory=list)
    #: whether the repository built the engine (and so closes it when done with it)
    owned: bool = True
    loading: asyncio.Future[None] | None = None
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def in_flight(self) -> int:
        return len(self.leases)

    @property
    def live_sessions(self) -> int:
        return sum(1 for lease in self.leases if lease.live)


@dataclass
class RepositoryHooks:
    """What the server counts and logs (all optional)."""

    #: a model became ready with this engine (attach per-engine metrics)
    on_engine: Callable[[str, Engine], None] = lambda name, engine: None
    #: a load attempt ended: model, seconds, outcome ("ok", "failed", "refused")
    on_load: Callable[[str, float, str], None] = lambda name, seconds, outcome: None
    #: a model was evicted to make room
    on_evict: Callable[[str], None] = lambda name: None
    #: a model's state changed
    on_state: Callable[[str, ModelState], None] = lambda name, state: None


def disk_id(root: Path) -> str:
    """What identifies the bundle on disk now: its manifest's bundle_id and mtime."""
    manifest = root / "manifest.json"
    try:
        stat = manifest.stat()
        bundle_id = json.loads(manifest.read_text()).get("bundle_id", "")
    except (OSError, ValueError, AttributeError):
        return "missing"
    return f"{bundle_id}:{stat.st_mtime_ns}"


def peek_spec(root: Path) -> tuple[ModelSpec | None, str]:
    """The model's spec and vocoder family from its manifest, without checking hashes."""
    try:
        bundle = load_bundle(root, verify_hashes=False)
        return ModelSpec.from_bundle(bundle), str(bundle.manifest["vocoder"].get("family", ""))
    except Exception:  # a broken bundle: its load reports why
        return None, ""


def scan(models_dir: Path) -> dict[str, Path]:
    """The bundles of a repository directory: every subdirectory with a manifest, by name."""
    if not models_dir.is_dir():
        raise FileNotFoundError(f"model repository {models_dir} is not a directory")
    found = {}
    for child in sorted(models_dir.iterdir()):
        if child.is_dir() and (child / "manifest.json").is_file() and NAME.match(child.name):
            found[child.name] = child
    return found
