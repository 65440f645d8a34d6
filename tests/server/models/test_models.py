"""Many models in one server (``serve --models DIR``, server/models/repository.py): three bundles
served at once, model control (LoadModel / UnloadModel with admin tokens, rescans) while
streams and live sessions run, failed bundles, LRU eviction and per-model metrics."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from distill_serve.bundle import load_bundle
from distill_serve.client import Client, DistillError
from distill_serve.server.api.server import ServerConfig
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.models.repository import ModelRepository
from distill_serve.server.pipeline.request import Limits
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc
from tests.conftest import ServerThread
from tests.server.engine.test_faults import other_model

ADMIN = "admin-token"
USER = "user-token"
#: no live admission limit: a capacity measured at start follows the machine's load
ENGINE = EngineConfig(use_cuda=False, live_capacity=0)


@pytest.fixture(scope="module")
def variant(stand_in_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in with other decoder weights: a third model."""
    return other_model(stand_in_bundle, tmp_path_factory.mktemp("variant") / "b", seed=99)


def repository_dir(root: Path, **bundles: Path) -> Path:
    """A model repository: one symlink per bundle, named as the model."""
    root.mkdir(parents=True, exist_ok=True)
    for name, bundle in bundles.items():
        (root / name).symlink_to(bundle, target_is_directory=True)
    return root


def serve(models_dir: Path, max_loaded: int = 0, **config: object) -> ServerThread:
    models = ModelRepository(
        lambda root: Engine.from_dir(root, ENGINE),
        models_dir=models_dir,
        max_loaded=max_loaded,
        grace_s=10.0,
    )
    limits = Limits(max_concurrent=12, max_duration_s=60.0)
    return ServerThread(ServerConfig(port=0, limits=limits, **config), models=models)  # type: ignore[arg-type]


@pytest.fixture
def trio(
    tmp_path: Path, demo_bundle: Path, stand_in_bundle: Path, variant: Path
) -> Iterator[ServerThread]:
    s = serve(
        repository_dir(tmp_path / "models", demo=demo_bundle, stand_in=stand_in_bundle,
                       variant=variant),
        admin_tokens=(ADMIN,),
    )  # fmt: skip
    yield s
    s.stop()


def _states(c: Client) -> dict[str, str]:
    return {m.name: m.state for m in c.list_models()}


def test_three_models_serve_concurrently(
    trio: ServerThread, demo_bundle: Path, stand_in_bundle: Path, variant: Path
) -> None:
    with Client(trio.target, timeout=120) as c:
        models = {m.name: m for m in c.list_models()}
        assert {n: m.state for n, m in models.items()} == dict.fromkeys(
            ("demo", "stand_in", "variant"), "ready"
        )
        for name, bundle in (("demo", demo_bundle), ("stand_in", stand_in_bundle),
                             ("variant", variant)):  # fmt: skip
            assert models[name].version == load_bundle(bundle).bundle_id
            info = c.info(model=name)
            assert (info.model, info.model_version) == (name, models[name].version)
        assert models["demo"].vocoder == "hifigan" and models["stand_in"].vocoder == "bigvgan"
        assert models["demo"].is_default  # the first by name
        assert c.info().model == "demo"
        # One reference per model, then all three at once from several threads.
        spec = {"seed": 5, "sample_rate": 22050}
        refs = {n: c.generate("crossfade", 1.5, model=n, **spec).audio for n in models}
        assert not np.array_equal(refs["stand_in"], refs["variant"])
        results: dict[tuple[str, int], np.ndarray] = {}

        def run(name: str, k: int) -> None:
            with Client(trio.target, timeout=300) as ck:
                call = ck.generate_streamed if k % 2 else ck.generate
                results[(name, k)] = call("crossfade", 1.5, model=name, **spec).audio

        threads = [threading.Thread(target=run, args=(n, k)) for n in models for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert len(results) == 6
        for (name, _), audio in results.items():
            np.testing.assert_array_equal(audio, refs[name])
    assert trio.metric("distill_requests_total", {"model": "variant", "status": "OK"}) >= 3
    assert trio.metric("distill_model_state", {"model": "demo", "state": "ready"}) == 1


def test_unknown_model_is_not_found_naming_the_models(trio: ServerThread) -> None:
    with Client(trio.target, timeout=30) as c:
        for call in (
            lambda: c.generate("crossfade", 1.0, model="nope"),
            lambda: c.generate_streamed("crossfade", 1.0, model="nope"),
            lambda: c.info(model="nope"),
            lambda: next(iter(c.live("crossfade", model="nope"))),
        ):
            with pytest.raises(DistillError) as err:
                call()
            assert err.value.code == grpc.StatusCode.NOT_FOUND
            assert "demo, stand_in, variant" in err.value.details
        with pytest.raises(DistillError) as err:
            Client(trio.target, token=ADMIN).load_model("nope")
        assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_model_control_needs_an_admin_token(
    tmp_path: Path, stand_in_bundle: Path, variant: Path
) -> None:
    models = repository_dir(tmp_path / "m", stand_in=stand_in_bundle, variant=variant)
    s = serve(models, auth_tokens=(USER,), admin_tokens=(ADMIN,))
    try:
        with Client(s.target, token=USER, timeout=60) as user:
            assert len(user.list_models()) == 2  # a generation token may read the list
            for call in (lambda: user.load_model("variant"), lambda: user.unload_model("variant")):
                with pytest.raises(DistillError) as err:
                    call()
                assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
                assert "admin token" in err.value.details
        with Client(s.target, timeout=60) as anonymous, pytest.raises(DistillError) as err:
            anonymous.load_model("variant")
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        with Client(s.target, token=ADMIN, timeout=60) as admin:
            assert admin.unload_model("variant").state == "unloaded"
            assert admin.generate("crossfade", 0.5, model="stand_in").audio.size  # admin may
    finally:
        s.stop()
    # A server with no admin tokens refuses model control to everyone.
    s = serve(models)
    try:
        with Client(s.target, timeout=60) as c, pytest.raises(DistillError) as err:
            c.unload_model("variant")
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "--admin-token-file" in err.value.details
    finally:
        s.stop()


def test_load_and_unload_under_load_lose_no_stream_and_no_live_session(
    trio: ServerThread,
) -> None:
    spec = pb.GenerationSpec(
        mode=pb.CHUNK_MODE_CROSSFADE, duration_s=4.0, seed=3, sample_rate=48000,
        encoding=pb.AUDIO_ENCODING_FLOAT32,
    )  # fmt: skip
    with (
        Client(trio.target, token=ADMIN, timeout=300) as admin,
        grpc.insecure_channel(trio.target) as ch,
    ):
        stub = pb_grpc.DistillServiceStub(ch)
        refs = {}
        for name in ("stand_in", "variant"):
            spec.model = name
            refs[name] = stub.Generate(pb.GenerateRequest(spec=spec), timeout=300).audio
        collected: dict[str, bytes] = {}
        errors: list[BaseException] = []

        def stream(name: str) -> None:
            request = pb.GenerateStreamRequest(spec=spec)
            request.spec.model = name
            try:
                msgs = stub.GenerateStream(request, timeout=300)
                collected[name] = b"".join(
                    m.audio.data for m in msgs if m.WhichOneof("event") == "audio"
                )
            except BaseException as exc:  # reported below
                errors.append(exc)

        session = admin.live("crossfade", seed=4, model="stand_in")
        blocks = iter(session)
        next(blocks)
        threads = [threading.Thread(target=stream, args=(n,)) for n in ("stand_in", "variant")]
        for t in threads:
            t.start()
        # Meanwhile: reload the model the streams and the live session run on, unload the
        # idle demo, load it again.
        assert admin.load_model("stand_in").state == "ready"
        assert admin.unload_model("demo").state == "unloaded"
        assert admin.load_model("demo").state == "ready"
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        for name in ("stand_in", "variant"):
            assert collected[name] == refs[name], name  # whole and unchanged
        live_blocks = [next(blocks) for _ in range(3)]
        assert all(b.audio.shape[1] > 0 for b in live_blocks)
        session.stop()
        for _ in blocks:
            pass
        assert session.end_reason == "stop"
        assert _states(admin) == dict.fromkeys(("demo", "stand_in", "variant"), "ready")


def test_unload_lets_a_live_session_finish_and_refuses_new_work(trio: ServerThread) -> None:
    with Client(trio.target, token=ADMIN, timeout=120) as admin:
        session = admin.live("crossfade", seed=4, model="variant")
        blocks = iter(session)
        next(blocks)
        unloaded: list[str] = []
        unloader = threading.Thread(
            target=lambda: unloaded.append(admin.unload_model("variant", grace_s=60).state)
        )
        unloader.start()
        deadline = time.monotonic() + 30
        while _states(admin)["variant"] != "unloading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _states(admin)["variant"] == "unloading"
        with pytest.raises(DistillError) as err:
            admin.generate("crossfade", 0.5, model="variant")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "being unloaded" in err.value.details
        for _ in range(5):  # the session plays on while the unload waits for it
            assert next(blocks).audio.shape[1] > 0
        assert not unloaded
        session.stop()
        for _ in blocks:
            pass
        assert session.end_reason == "stop"
        unloader.join(timeout=60)
        assert unloaded == ["unloaded"]
        with pytest.raises(DistillError) as err:
            admin.generate("crossfade", 0.5, model="variant")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "LoadModel" in err.value.details
        assert admin.generate("crossfade", 0.5, model="stand_in").audio.size  # others serve
        assert admin.load_model("variant").state == "ready"
        assert admin.generate("crossfade", 0.5, model="variant").audio.size


def test_unload_cancels_what_outlives_its_grace(trio: ServerThread) -> None:
    with Client(trio.target, token=ADMIN, timeout=120) as admin:
        session = admin.live("crossfade", seed=4, model="variant")
        blocks = iter(session)
        next(blocks)
        started = time.monotonic()
        assert admin.unload_model("variant", grace_s=0.5).state == "unloaded"
        assert time.monotonic() - started < 30
        with pytest.raises(DistillError) as err:
            for _ in blocks:
                pass
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert "outlived the unload's grace" in err.value.details
        assert trio.metric("distill_active_generations", {"model": "variant"}) == 0


def test_a_corrupt_bundle_fails_alone(tmp_path: Path, stand_in_bundle: Path, variant: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(variant, bad)
    (bad / "vocoder.onnx").write_bytes(b"not a model")
    s = serve(repository_dir(tmp_path / "m", stand_in=stand_in_bundle, broken=bad))
    try:
        with Client(s.target, timeout=60) as c:
            models = {m.name: m for m in c.list_models()}
            assert models["broken"].state == "failed"
            assert "vocoder.onnx" in models["broken"].reason
            assert models["stand_in"].state == "ready"
            with pytest.raises(DistillError) as err:
                c.generate("crossfade", 0.5, model="broken")
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
            assert "failed to load" in err.value.details and "vocoder.onnx" in err.value.details
            for told in (models["broken"].reason, err.value.details):  # no server paths
                assert str(tmp_path) not in told and "/" not in told, told
            assert c.generate("crossfade", 0.5, model="stand_in").audio.size
        assert s.metric("distill_model_loads_total", {"model": "broken", "outcome": "failed"}) == 1
    finally:
        s.stop()


def test_least_recently_used_idle_model_is_evicted_on_demand(
    tmp_path: Path, stand_in_bundle: Path, variant: Path
) -> None:
    third = tmp_path / "third"
    shutil.copytree(variant, third)
    s = serve(
        repository_dir(tmp_path / "m", a=stand_in_bundle, b=variant, c=third), max_loaded=2,
        admin_tokens=(ADMIN,),
    )  # fmt: skip
    try:
        with Client(s.target, token=ADMIN, timeout=120) as c:
            assert _states(c) == {"a": "ready", "b": "ready", "c": "unloaded"}
            c.generate("crossfade", 0.5, model="a")  # b is now the least recently used
            assert c.generate("crossfade", 0.5, model="c").audio.size  # loaded on demand
            models = {m.name: m for m in c.list_models()}
            assert {n: m.state for n, m in models.items()} == {
                "a": "ready", "b": "unloaded", "c": "ready",
            }  # fmt: skip
            assert "evicted" in models["b"].reason
            assert s.metric("distill_model_evictions_total", {"model": "b"}) == 1
            # Every loaded model busy: a load is refused, nothing is evicted.
            sessions = [c.live("crossfade", seed=1, model=n) for n in ("a", "c")]
            its = [iter(x) for x in sessions]
            for it in its:
                next(it)
            with pytest.raises(DistillError) as err:
                c.generate("crossfade", 0.5, model="b")
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-loaded-models" in err.value.details
            for x in sessions:
                x.close()
    finally:
        s.stop()


def test_rescan_adds_reloads_and_removes(
    tmp_path: Path, stand_in_bundle: Path, variant: Path
) -> None:
    root = repository_dir(tmp_path / "m", a=stand_in_bundle)
    s = serve(root)
    try:
        with Client(s.target, timeout=120) as c:
            version_a = c.list_models()[0].version
            assert s.call(s.server.models.rescan()) == []  # nothing changed: nothing reloaded
            (root / "b").symlink_to(variant, target_is_directory=True)
            changes = s.call(s.server.models.rescan(), timeout=120)
            assert changes == ["b: added, ready"]
            # a replaced on disk by another bundle: reloaded, with its new version
            (root / "a").unlink()
            shutil.copytree(other_model(stand_in_bundle, tmp_path / "a2", seed=7), root / "a")
            changes = s.call(s.server.models.rescan(), timeout=120)
            assert len(changes) == 1 and changes[0].startswith("a: reloaded, ready")
            models = {m.name: m for m in c.list_models()}
            assert models["a"].version != version_a
            (root / "b").unlink()
            assert s.call(s.server.models.rescan(), timeout=120) == ["b: removed"]
            with pytest.raises(DistillError) as err:
                c.generate("crossfade", 0.5, model="b")
            assert err.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        s.stop()


def test_per_model_concurrency_limit(tmp_path: Path, stand_in_bundle: Path, variant: Path) -> None:
    models = ModelRepository(
        lambda root: Engine.from_dir(root, ENGINE),
        models_dir=repository_dir(tmp_path / "m", a=stand_in_bundle, b=variant),
    )
    limits = Limits(max_concurrent=8, max_concurrent_per_model=1)
    s = ServerThread(ServerConfig(port=0, limits=limits), models=models)
    try:
        with Client(s.target, timeout=120) as c:
            session = c.live("crossfade", seed=1, model="a")
            blocks = iter(session)  # held: a dropped iterator cancels the session
            next(blocks)
            with pytest.raises(DistillError) as err:
                c.generate("crossfade", 0.5, model="a")
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-concurrent-per-model" in err.value.details
            assert c.generate("crossfade", 0.5, model="b").audio.size  # the other model
            session.close()
        assert s.metric("distill_rejected_total", {"model": "a", "reason": "model_busy"}) == 1
    finally:
        s.stop()


def test_model_names_follow_their_directories(tmp_path: Path, stand_in_bundle: Path) -> None:
    root = repository_dir(tmp_path / "m", a=stand_in_bundle)
    (root / ".hidden").mkdir()
    (root / "no-manifest").mkdir()
    (root / "file.txt").write_text("")
    repo = ModelRepository(lambda r: Engine.from_dir(r, ENGINE), models_dir=root)
    assert repo.names() == ["a"]
    with pytest.raises(LookupError, match=r"'x'.*models: a"):
        ModelRepository(lambda r: Engine.from_dir(r, ENGINE), models_dir=root, default="x")
    assert os.path.isdir(root / "a")


def test_cli_serves_a_repository(tmp_path: Path, stand_in_bundle: Path, variant: Path) -> None:
    """`serve --models DIR --admin-token-file F` as an operator runs it: list-models, load,
    unload, generate --model, and a SIGHUP rescan that picks up a new directory."""
    from tests.client.test_cli import _wait_for, run_cli
    from tests.conftest import ServeProcess

    root = repository_dir(tmp_path / "m", a=stand_in_bundle, b=variant)
    admin_file = tmp_path / "admin"
    admin_file.write_text(ADMIN + "\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = ServeProcess(
        ["--models", str(root), "--admin-token-file", str(admin_file), "--live-capacity", "0"],
        env, startup_s=300,
    )  # fmt: skip
    try:
        assert any(line.startswith("model a: ready") for line in server.lines)
        listed = run_cli("list-models", "--server", server.target)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].startswith("a ") and "ready" in lines[0] and "(default)" in lines[0]
        assert lines[1].startswith("b ") and "ready" in lines[1]
        denied = run_cli("unload", "b", "--server", server.target)  # no token at all
        assert denied.returncode == 1 and "UNAUTHENTICATED" in denied.stderr
        out = run_cli("unload", "b", "--server", server.target, "--token", ADMIN)
        assert out.returncode == 0 and "unloaded" in out.stdout, out.stderr
        wav = tmp_path / "b.wav"
        gen = run_cli("generate", "--server", server.target, "--mode", "crossfade",
                      "--duration", "0.5", "--model", "b", "-o", str(wav))  # fmt: skip
        assert gen.returncode == 1 and "UNAVAILABLE" in gen.stderr
        out = run_cli("load", "b", "--server", server.target, "--token", ADMIN)
        assert out.returncode == 0 and "ready" in out.stdout, out.stderr
        gen = run_cli("generate", "--server", server.target, "--mode", "crossfade",
                      "--duration", "0.5", "--model", "b", "-o", str(wav))  # fmt: skip
        assert gen.returncode == 0, gen.stderr
        info = run_cli("info", "--server", server.target, "--model", "b")
        assert info.returncode == 0 and "model: b (version" in info.stdout
        (root / "c").symlink_to(variant, target_is_directory=True)
        server.proc.send_signal(signal.SIGHUP)
        assert _wait_for(server, "rescan: c: added, ready"), "".join(server.lines[-20:])
        assert "c " in run_cli("list-models", "--server", server.target).stdout
    finally:
        assert server.stop() == 0
