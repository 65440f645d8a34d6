"""The model repository: the models one server serves, by name, loaded and unloaded while it
serves.

Shaped after Triton's model repository with explicit model control and TorchServe's
management API: a directory holds one bundle per subdirectory (the name is the directory's,
the bundle's ``bundle_id`` is its version); an operator loads, reloads and unloads models
without a restart, and a rescan (SIGHUP, or a poll) brings the served set in line with the
directory. ``serve --bundle DIR`` (and the demo bundle) is the one-model case of the same.

Rules, each tested in ``tests/server/models/test_models.py``:

- Loading runs in a worker thread: requests to the other models go on meanwhile. A model
  that is reloaded keeps serving its old engine until the new one is ready; a reload that
  fails its checks leaves the old one serving (the reason is kept).
- A model that fails to load (a hash mismatch, a missing file) is ``failed`` with the
  reason; the others keep serving.
- Unloading refuses new requests to the model at once (``ModelUnavailable``), lets the
  generations already running finish for up to ``grace_s`` and then cancels them; the
  engine is closed when the last one has ended. Engines swapped out by a reload are closed
  the same way, once their last generation ends.
- ``max_loaded`` (0: no limit) bounds the models loaded at once: loading one more unloads
  the least recently used model that has nothing in flight (an eviction, counted); if every
  loaded model is busy, the load is refused (``RepositoryFull``). A request to an evicted
  model loads it again on demand; one that an operator unloaded stays unloaded until
  ``LoadModel`` or a rescan that finds it changed.

Concurrency: every method runs on the server's event loop, so the state needs no lock.
Only ``Engine`` construction leaves the loop (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from distill_serve.server.engine.engine import Engine
from distill_serve.server.models.entry import (
    NAME,
    Lease,
    ModelEntry,
    ModelState,
    ModelUnavailable,
    RepositoryFull,
    RepositoryHooks,
    UnknownModel,
    client_reason,
    disk_id,
    peek_spec,
    scan,
)

__all__ = [
    "Lease",
    "ModelEntry",
    "ModelRepository",
    "ModelState",
    "ModelUnavailable",
    "RepositoryFull",
    "RepositoryHooks",
    "UnknownModel",
]

log = logging.getLogger(__name__)


class ModelRepository:
    """The server's models by name; see the module docstring for the rules.

    Args:
        factory: builds an engine from a bundle directory (runs in a worker thread).
        models_dir: a repository directory (``serve --models``), or None for fixed bundles.
        bundles: fixed models by name (``serve --bundle``: one).
        default: the model of requests that name none (None: the first by name).
        max_loaded: most models loaded at once (0: no limit).
        grace_s: how long an unload lets in-flight generations run on by default.
    """

    def __init__(
        self,
        factory: Callable[[Path], Engine],
        *,
        models_dir: Path | None = None,
        bundles: dict[str, Path] | None = None,
        default: str | None = None,
        max_loaded: int = 0,
        grace_s: float = 10.0,
        hooks: RepositoryHooks | None = None,
    ) -> None:
        if (models_dir is None) == (bundles is None):
            raise ValueError("give a models directory or fixed bundles, not both")
        self._factory = factory
        self.models_dir = models_dir
        self.max_loaded = max_loaded
        self.grace_s = grace_s
        self.hooks = hooks or RepositoryHooks()
        found = scan(models_dir) if models_dir is not None else dict(bundles or {})
        for name in found:
            if not NAME.match(name):
                raise ValueError(f"model name {name!r}: use letters, digits, '.', '_', '-'")
        self._entries: dict[str, ModelEntry] = {}
        for name, root in found.items():
            self._add(name, root)
        if default is not None and default not in found:
            raise UnknownModel(default, found)
        self._default = default

    # --- lookup --------------------------------------------------------------------------
    @property
    def default_name(self) -> str:
        if self._default is not None:
            return self._default
        return min(self._entries) if self._entries else ""

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[ModelEntry]:
        return [self._entries[n] for n in self.names()]

    def entry(self, name: str) -> ModelEntry:
        """The entry of ``name`` ("" names the default model)."""
        key = name or self.default_name
        found = self._entries.get(key)
        if found is None:
            raise UnknownModel(name, self._entries)
        return found

    @property
    def loaded(self) -> list[ModelEntry]:
        return [e for e in self.entries() if e.engine is not None or e.loading is not None]

    @property
    def in_flight(self) -> int:
        return sum(e.in_flight for e in self._entries.values())

    # --- generations ---------------------------------------------------------------------
    async def acquire(self, name: str, live: bool = False) -> Lease:
        """Hold ``name``'s engine for one generation; loads an evicted model on demand.

        Raises:
            UnknownModel, ModelUnavailable, RepositoryFull.
        """
        entry = self.entry(name)
        if entry.loading is not None:
            await asyncio.shield(entry.loading)
        elif entry.state is ModelState.UNLOADED and entry.on_demand:
            await self.load(entry.name)
        if entry.state is not ModelState.READY or entry.engine is None:
            raise ModelUnavailable(self._why_not(entry))
        lease = Lease(entry, entry.engine, live, asyncio.current_task())
        entry.leases.add(lease)
        entry.drained.clear()
        entry.last_used = time.monotonic()
        return lease

    def release(self, lease: Lease) -> None:
        """End one generation's hold; closes engines no longer served once idle."""
        entry = lease.entry
        entry.leases.discard(lease)
        entry.last_used = time.monotonic()
        in_use = {id(x.engine) for x in entry.leases}
        for old in [e for e in entry.retiring if id(e) not in in_use]:
            entry.retiring.remove(old)
            old.close()
        if not entry.leases:
            entry.drained.set()

    @staticmethod
    def _why_not(entry: ModelEntry) -> str:
        name = entry.name
        if entry.state is ModelState.LOADING:
            return f"model {name!r} is loading; retry shortly"
        if entry.state is ModelState.FAILED:
            return f"model {name!r} failed to load: {client_reason(entry.reason)}"
        if entry.state is ModelState.UNLOADING:
            return f"model {name!r} is being unloaded; use another model or load it again"
        return f"model {name!r} is not loaded (an operator unloaded it); LoadModel loads it"

    # --- model control -------------------------------------------------------------------
    def add_engine(self, name: str, engine: Engine, owned: bool = False) -> None:
        """Serve an engine built elsewhere as ``name`` (tests, embedding servers, a Ray
        replica's constructor). Unless ``owned``, the repository does not close it at
        shutdown, only when it replaces it."""
        entry = self._entries.get(name)
        if entry is None:
            entry = self._add(name, engine.bundle.root, peek=False)
        entry.disk_id = disk_id(entry.root)
        self._ready(entry, engine, time.monotonic(), owned=owned)

    async def load_all(self) -> None:
        """Load every model not loaded yet (the default first), up to ``max_loaded``."""
        order = sorted(self._entries, key=lambda n: (n != self.default_name, n))
        for name in order:
            entry = self._entries[name]
            if entry.engine is not None or entry.state is ModelState.FAILED:
                continue
            if self.max_loaded and len(self.loaded) >= self.max_loaded:
                log.info("model %s not loaded at start: --max-loaded-models is reached", name)
                continue
            await self.load(name)

    async def load(self, name: str, root: Path | None = None) -> ModelEntry:
        """Load (or reload from disk, or from ``root``) the model ``name``; returns its entry
        once it is ready or failed. Raises UnknownModel, RepositoryFull."""
        entry = self.entry(name)
        if entry.loading is not None:
            await asyncio.shield(entry.loading)
            if root is None:
                return entry
        previous = entry.root, entry.disk_id
        if root is not None:
            entry.root = root
        if entry.engine is None:
            self._make_room(entry)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        entry.loading = done
        reloading = entry.engine is not None and entry.state is ModelState.READY
        if not reloading:
            self._set_state(entry, ModelState.LOADING, "")
        entry.disk_id = disk_id(entry.root)
        started = time.monotonic()
        try:
            engine = await asyncio.to_thread(self._factory, entry.root)
        except Exception as exc:  # any failure to load is reported, never raised to callers
            reason = f"{type(exc).__name__}: {exc}"
            if reloading:
                if root is not None:  # still what is served; a rescan retries only
                    entry.root, entry.disk_id = previous  # a bundle that changes again
                entry.reason = f"reload refused, still serving {entry.version}: {reason}"
                log.warning("model %s: %s", name, entry.reason)
                self.hooks.on_load(name, time.monotonic() - started, "refused")
            else:
                self._set_state(entry, ModelState.FAILED, reason)
                log.error("model %s failed to load from %s: %s", name, entry.root, reason)
                self.hooks.on_load(name, time.monotonic() - started, "failed")
        else:
            self._ready(entry, engine, started)
            self.hooks.on_load(name, time.monotonic() - started, "ok")
        finally:
            entry.loading = None
            done.set_result(None)
        return entry

    def _ready(self, entry: ModelEntry, engine: Engine, started: float, owned: bool = True) -> None:
        old = entry.engine
        if old is not None and old is not engine:
            if any(lease.engine is old for lease in entry.leases):
                entry.retiring.append(old)
            else:
                old.close()
        entry.engine = engine
        entry.owned = owned
        entry.version = engine.bundle.bundle_id
        entry.spec = engine.model
        entry.vocoder = str(engine.bundle.manifest["vocoder"].get("family", ""))
        entry.on_demand = True
        entry.last_used = time.monotonic()
        self._set_state(entry, ModelState.READY, "")
        self.hooks.on_engine(entry.name, engine)
        log.info(
            "model %s ready: %s (version %s) in %.1f s",
            entry.name, entry.root, entry.version, time.monotonic() - started,
        )  # fmt: skip

    def _make_room(self, entry: ModelEntry) -> None:
        """Evict the least recently used idle model if loading ``entry`` would pass
        ``max_loaded``."""
        if not self.max_loaded:
            return
        loaded = [e for e in self.loaded if e is not entry]
        if len(loaded) < self.max_loaded:
            return
        idle = [e for e in loaded if e.engine is not None and not e.leases and not e.loading]
        if not idle:
            raise RepositoryFull(
                f"cannot load model {entry.name!r}: {len(loaded)} models are loaded "
                f"(--max-loaded-models {self.max_loaded}) and every one has generations "
                "in flight; retry when one is idle, or unload one"
            )
        victim = min(idle, key=lambda e: e.last_used)
        log.info("model %s evicted (least recently used) to load %s", victim.name, entry.name)
        self._close(victim)
        victim.on_demand = True
        self._set_state(victim, ModelState.UNLOADED, f"evicted to load {entry.name}")
        self.hooks.on_evict(victim.name)

    async def unload(self, name: str, grace_s: float | None = None) -> ModelEntry:
        """Refuse new requests to ``name``, let in-flight ones run for ``grace_s`` (then
        cancel them), close its engine. Raises UnknownModel."""
        entry = self.entry(name)
        if entry.loading is not None:
            await asyncio.shield(entry.loading)
        entry.on_demand = False
        if entry.engine is None:
            self._set_state(entry, ModelState.UNLOADED, "unloaded by an operator")
            return entry
        self._set_state(entry, ModelState.UNLOADING, "")
        grace = self.grace_s if grace_s is None else grace_s
        if entry.leases:
            try:
                await asyncio.wait_for(entry.drained.wait(), grace)
            except TimeoutError:
                for lease in entry.leases:
                    lease.revoked = (
                        f"model {name!r} was unloaded and this generation outlived the "
                        f"unload's grace of {grace:g} s; retry with another model"
                    )
                tasks = [x.task for x in entry.leases if x.task is not None]
                log.warning(
                    "model %s: %d generations still running after %g s; cancelling them",
                    name, len(entry.leases), grace,
                )  # fmt: skip
                for task in tasks:
                    task.cancel()
                if tasks:
                    await asyncio.wait(tasks, timeout=10)
        self._close(entry)
        self._set_state(entry, ModelState.UNLOADED, "unloaded by an operator")
        log.info("model %s unloaded", name)
        return entry

    def _close(self, entry: ModelEntry) -> None:
        engine, entry.engine = entry.engine, None
        if engine is None:
            return
        if any(lease.engine is engine for lease in entry.leases):
            entry.retiring.append(engine)  # closed by the last release
        elif entry.owned:
            engine.close()

    async def rescan(self) -> list[str]:
        """Bring the served set in line with disk: load new models, reload changed ones
        (and failed ones whose bundle changed), unload removed ones. Returns what it did,
        one line per model."""
        changes: list[str] = []
        found = scan(self.models_dir) if self.models_dir is not None else None
        if found is not None:
            for name in [n for n in self._entries if n not in found]:
                await self.unload(name)
                del self._entries[name]
                changes.append(f"{name}: removed")
            for name, root in found.items():
                if name not in self._entries:
                    self._add(name, root)
                    entry = await self._load_if_room(name)
                    changes.append(f"{name}: added, {entry.state.value}")
        for entry in self.entries():
            if entry.state in (ModelState.READY, ModelState.FAILED) and (
                disk_id(entry.root) != entry.disk_id
            ):
                if entry.engine is None:  # failed: try again
                    entry = await self._load_if_room(entry.name)
                else:
                    entry = await self.load(entry.name)
                note = f" ({entry.reason})" if entry.reason else ""
                changes.append(f"{entry.name}: reloaded, {entry.state.value} {entry.version}{note}")
        return changes

    async def _load_if_room(self, name: str) -> ModelEntry:
        try:
            return await self.load(name)
        except RepositoryFull as exc:
            entry = self._entries[name]
            entry.reason = str(exc)
            return entry

    def close(self) -> None:
        """Close every engine the repository built (the server is stopping)."""
        for entry in self._entries.values():
            for old in entry.retiring:
                old.close()
            entry.retiring.clear()
            if entry.engine is not None and entry.owned:
                entry.engine.close()

    # --- internals -----------------------------------------------------------------------
    def _add(self, name: str, root: Path, peek: bool = True) -> ModelEntry:
        spec, vocoder = peek_spec(root) if peek else (None, "")
        entry = ModelEntry(name, root, spec=spec, vocoder=vocoder)
        entry.drained.set()
        self._entries[name] = entry
        return entry

    def _set_state(self, entry: ModelEntry, state: ModelState, reason: str) -> None:
        entry.state = state
        entry.reason = reason
        self.hooks.on_state(entry.name, state)
