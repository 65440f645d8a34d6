"""Shared fixtures: one stand-in bundle per session (random weights, built through the CLI),
engines and real gRPC servers on loopback running in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from filelock import FileLock

from distill_serve.audio import Encoding
from distill_serve.server.api.server import DistillServer, ServerConfig
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.models.demo import demo_bundle_dir
from distill_serve.server.models.metrics import Metrics
from distill_serve.server.pipeline.generate import audio_blocks
from distill_serve.server.pipeline.request import (
    ChunkMode,
    GenerationParams,
    Limits,
    RawRequest,
    Spatial,
    validate,
)
from tests import realtime, shared_builds

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: A small HiFi-GAN V1 config (32 channels; the universal one has 512): fast to export.
SMALL_HIFIGAN = {
    "resblock": "1",
    "upsample_rates": [8, 8, 2, 2],
    "upsample_kernel_sizes": [16, 16, 4, 4],
    "upsample_initial_channel": 32,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "num_mels": 80,
    "n_fft": 1024,
    "hop_size": 256,
    "win_size": 1024,
    "sampling_rate": 22050,
    "fmin": 0,
    "fmax": 8000,
}

#: Figures tests measure (fuzz counts, load results, bridge error, ...), shown at the end of
#: the run, passing or not, in a "distill-serve measurements" section.
_PREBUILD = pytest.StashKey[subprocess.Popen]()
_MEASUREMENTS: list[str] = []


@pytest.fixture(scope="session")
def report() -> Callable[[str], None]:
    def add(line: str) -> None:
        _MEASUREMENTS.append(line)
        print(line)

    return add


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", realtime.MARKER_HELP)
    realtime.name_the_run(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    realtime.remove_locks(config)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """A real-time test runs while no other test does (tests/realtime.py)."""
    with realtime.turn(alone=item.get_closest_marker(realtime.MARK) is not None):
        yield


def pytest_sessionstart(session: pytest.Session) -> None:
    """The run's first process starts the shared builds in the background (tests/prebuild.py),
    so that they overlap the first test modules instead of keeping a worker waiting."""
    if os.environ.get("PYTEST_XDIST_WORKER") or session.config.option.collectonly:
        return
    base = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    log = (base / "prebuild.log").open("w")
    session.config.stash[_PREBUILD] = subprocess.Popen(
        [sys.executable, "-m", "tests.prebuild", str(base)], cwd=ROOT, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def _stop_prebuild(config: pytest.Config) -> None:
    proc = config.stash.get(_PREBUILD, None)
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker hands its measurements to the controller, which prints them."""
    _stop_prebuild(session.config)
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["distill_measurements"] = list(_MEASUREMENTS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    _MEASUREMENTS.extend(getattr(node, "workeroutput", {}).get("distill_measurements", []))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _MEASUREMENTS:
        terminalreporter.section("distill-serve measurements")
        for line in _MEASUREMENTS:
            terminalreporter.write_line(line)


def shared_path(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A path every process of this test run sees: with pytest-xdist (the README's command
    runs two workers) the workers' temp dirs share a parent."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


@contextlib.contextmanager
def run_lock(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """``shared_path(name)``, held by one process of the run at a time: the first builds
    what the others then reuse."""
    path = shared_path(tmp_path_factory, name)
    with FileLock(f"{path}.lock"):
        yield path


@pytest.fixture(scope="session")
def stand_in_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``distill-serve export --stand-in --format both``, once per test run."""
    return shared_builds.ensure(
        shared_path(tmp_path_factory, "stand-in"), "manifest.json", shared_builds.export_stand_in
    )


CLI = [sys.executable, "-m", "distill_serve"]
ROOT = shared_builds.ROOT


@pytest.fixture(scope="session")
def client_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cmake -S client -B <dir> && cmake --build <dir>``: the C++ examples and libdistill,
    built once per run (the C++, C library and plug-in tests share it)."""
    missing = shared_builds.native_toolchain_missing()
    if missing is not None:
        pytest.skip(
            f"C++ toolchain not installed ({missing} missing); .ci/run installs it with "
            f"apt-get install {shared_builds.NATIVE_PACKAGES}"
        )
    return shared_builds.ensure(
        shared_path(tmp_path_factory, "client-build"), "built", shared_builds.build_client
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """``distill-serve serve --port <free> --no-cuda ARGS`` as a child process, its output
    collected line by line; ready once it prints "listening on"."""

    def __init__(self, args: list[str], env: dict[str, str], startup_s: float = 600) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--port", str(self.port), "--no-cuda", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.env = env
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if "listening on" in line:
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(startup_s) or self.proc.poll() is not None:
            self.proc.kill()
            raise AssertionError("server did not start:\n" + "".join(self.lines[-40:]))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """``distill-serve serve`` as a new user first runs it: no ``--bundle`` and an empty
    cache, so it builds the demo bundle (trained decoder + HiFi-GAN universal, real weights)
    before it listens. That bundle is :func:`demo_bundle`: built once per run."""
    with run_lock(tmp_path_factory, "cache") as cache:  # the first worker's server builds it
        cache.mkdir(exist_ok=True)
        env = dict(os.environ, DISTILL_SERVE_CACHE=str(cache), PYTHONUNBUFFERED="1")
        server = ServeProcess([], env)
        assert (cache / demo_bundle_dir().name / "manifest.json").is_file()
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="session")
def demo_bundle(demo_server: ServeProcess) -> Path:
    """The demo bundle :func:`demo_server` built: the HiFi-GAN (22.05 kHz, mel bridge) tests'
    bundle."""
    return Path(demo_server.env["DISTILL_SERVE_CACHE"]) / demo_bundle_dir().name


def manifest(bundle: Path) -> dict:
    """A bundle's ``manifest.json``."""
    return json.loads((bundle / "manifest.json").read_text())


def params(engine: Engine, mode: ChunkMode = ChunkMode.CROSSFADE, **kw: object) -> GenerationParams:
    """Validated parameters of a 2 s mono request (slider mode: slider 0 at +5)."""
    fields: dict = {
        "mode": mode,
        "duration_s": 2.0,
        "seed": 3,
        "sample_rate": 0,
        "encoding": Encoding.PCM16,
        "spatial": Spatial.MONO,
    }
    if mode is ChunkMode.SLIDER:
        fields["slider_positions"] = [(0, 5)]
    fields.update(kw)
    return validate(RawRequest(**fields), engine.model, Limits(), fallback_seed=0)


def generate(engine: Engine, p: GenerationParams) -> np.ndarray:
    """The whole clip of ``p`` from the pipeline (no server)."""
    return np.concatenate(list(audio_blocks(engine.runner(), engine.model, p)), axis=1)


@pytest.fixture(scope="session")
def engine(stand_in_bundle: Path) -> Engine:
    """The stand-in's engine, with no live admission limit: a capacity measured at start
    follows the machine's speed (one session under a full CPU load), and what tests open
    must not. ``tests/server/pipeline/test_streaming.py`` checks the measured admission on its
    own engine."""
    return Engine.from_dir(stand_in_bundle, EngineConfig(use_cuda=False, live_capacity=0))


class ServerThread:
    """A :class:`DistillServer` on 127.0.0.1:<free port>, its loop in a daemon thread."""

    def __init__(
        self, config: ServerConfig, engine: Engine | None = None, models: object = None
    ) -> None:
        self.metrics = Metrics()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

        async def start() -> tuple[DistillServer, int]:
            # grpc.aio binds a server to the loop it is made on: make it on ours.
            server = DistillServer(config, engine, self.metrics, models)
            await server.models.load_all()
            return server, await server.start()

        self.server, self.port = self.call(start())

    def call(self, coro, timeout: float = 60):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (every series has
        a ``model`` label too; a test that does not name one sums over the models)."""
        want = labels or {}
        return sum(
            sample.value
            for family in self.metrics.registry.collect()
            for sample in family.samples
            if sample.name == name and want.items() <= sample.labels.items()
        )

    def stop(self) -> None:
        self.call(self.server.stop(grace=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def start_server(engine: Engine, **limits: float | int) -> ServerThread:
    config = ServerConfig(port=0, limits=replace(Limits(), **limits))
    return ServerThread(config, engine)


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[ServerThread]:
    s = start_server(engine, max_concurrent=4, max_duration_s=60.0)
    yield s
    s.stop()
