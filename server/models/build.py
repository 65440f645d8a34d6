"""One way to build a server's model repository, for the plain server and each Ray replica:
where the models come from (:class:`ModelSource`), the engines they load into, and the
repository's events wired into the server's metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from distill_serve.server.engine.config import EngineConfig
from distill_serve.server.engine.engine import Engine
from distill_serve.server.models.demo import ensure_demo_bundle
from distill_serve.server.models.metrics import Metrics
from distill_serve.server.models.repository import ModelRepository, ModelState, RepositoryHooks
from distill_serve.server.models.source import ModelSource


def engine_factory(engine: EngineConfig) -> Callable[[Path], Engine]:
    """How a repository builds the engine of a bundle directory (in a worker thread)."""

    def factory(root: Path) -> Engine:
        return Engine.from_dir(root, engine)

    return factory


def build_repository(
    source: ModelSource, engine: EngineConfig, metrics: Metrics | None = None
) -> ModelRepository:
    """The repository ``source`` names, its engines built with ``engine``, its events in
    ``metrics`` (when given). Exports the demo bundle first if it is asked for and not cached."""
    factory = engine_factory(engine)
    if source.models_dir is not None:
        models = ModelRepository(
            factory,
            models_dir=source.models_dir,
            default=source.default_model,
            max_loaded=source.max_loaded,
            grace_s=source.grace_s,
        )
    else:
        root = source.bundle or ensure_demo_bundle()
        models = ModelRepository(factory, bundles={source.name: root}, grace_s=source.grace_s)
    if metrics is not None:
        wire_metrics(models, metrics)
    return models


def wire_metrics(models: ModelRepository, metrics: Metrics) -> None:
    """Count ``models``' events in ``metrics`` from now on, and what it holds already: every
    loaded engine attached, every model's state set."""
    models.hooks = repository_hooks(metrics)
    for entry in models.entries():
        if entry.engine is not None:
            attach_engine(metrics, entry.name, entry.engine)
        metrics.model_state.labels(entry.name, entry.state.value).set(1)


def repository_hooks(metrics: Metrics) -> RepositoryHooks:
    """A repository's events in ``metrics``: loads and their time, evictions, states, and
    every engine it makes ready attached (:func:`attach_engine`). A plain server and each
    Ray replica wire their repository so."""
    m = metrics

    def on_load(name: str, seconds: float, outcome: str) -> None:
        m.model_loads.labels(name, outcome).inc()
        if outcome == "ok":
            m.model_load_seconds.labels(name).observe(seconds)

    def on_state(name: str, state: ModelState) -> None:
        for s in ModelState:
            m.model_state.labels(name, s.value).set(1 if s is state else 0)

    return RepositoryHooks(
        on_engine=lambda name, engine: attach_engine(m, name, engine),
        on_load=on_load,
        on_evict=lambda name: m.model_evictions.labels(name).inc(),
        on_state=on_state,
    )


def attach_engine(metrics: Metrics, name: str, engine: Engine) -> None:
    """Count the engine's CUDA fallbacks and failed CUDA starts in ``metrics`` (a failure
    before the server existed counts once, here), and its step scheduler's runs, under its
    model's name."""
    m = metrics
    engine.on_fallback = lambda graph: m.fallbacks.labels(name, graph).inc()
    engine.on_primary_failure = lambda reason: m.primary_failures.labels(name).inc()
    if engine.provider_note and not engine.has_primary:
        m.primary_failures.labels(name).inc()
    engine.on_decoder_run = m.decoder_run.labels(name).observe
    if (scheduler := engine.scheduler) is not None:
        overflow = [0]  # the pool's count at the last run

        def on_run(batch: int, seconds: float, cpu_seconds: float, missed: int) -> None:
            m.step_batch.labels(name).observe(batch)
            m.step_cpu.labels(name).inc(cpu_seconds)
            if missed:
                m.step_misses.labels(name).inc(missed)
            if (pool := engine.state_pool_stats()) is not None:
                m.pool_rows.labels(name).set(pool.rows)
                m.pool_in_use.labels(name).set(pool.in_use)
                m.pool_overflow.labels(name).inc(pool.overflow_steps - overflow[0])
                overflow[0] = pool.overflow_steps

        scheduler.on_run = on_run
        scheduler.on_queue = m.step_queue.labels(name).set
        scheduler.on_step = m.step_latency.labels(name).observe
