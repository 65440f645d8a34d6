"""Ray Serve scenarios, run inside a loopback-only network namespace by
tests/server/ray/test_ray.py.

``python -m tests.server.ray.ray_scenarios MODELS_DIR OUT.json``: starts a local Ray head,
deploys the model repository (``a``: the stand-in, the default; ``b``: another model) on two
replicas behind Serve's gRPC proxy with one model loaded per replica, plain servers of each
model beside it, and records what each scenario saw in ``OUT.json`` (the test asserts on it). Ray
binds every interface, which is why this never runs on the host's network.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from distill_serve.client import Client, DistillError
from distill_serve.server.api.server import ServerConfig
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.pipeline.request import Limits
from distill_serve.server.ray.serve import RayConfig, start

PORT = 50199
METRICS_PORT = 50198
TOKEN = "ray-test-token"
MODES = {
    "crossfade": {},
    "latent_interp": {"steps_between": 2},
    "slider": {"sliders": {1: 4, 2: -3}, "evolution_amount": 0.25},
}


def equivalence(ray_target: str, plain_target: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kw = {"timeout": 120, "token": TOKEN}
    with Client(ray_target, **kw) as ray_c, Client(plain_target, **kw) as plain_c:  # type: ignore[arg-type]
        for mode, options in MODES.items():
            spec = dict(options, seed=9, sample_rate=48000, encoding="float32", spatial="stereo")
            plain = plain_c.generate(mode, 2.2, **spec).audio
            unary = ray_c.generate(mode, 2.2, **spec).audio
            streamed = ray_c.generate_streamed(mode, 2.2, **spec).audio
            out[mode] = {
                "unary_identical": bool(np.array_equal(plain, unary)),
                "stream_identical": bool(np.array_equal(plain, streamed)),
                "shape": list(unary.shape),
            }
        info = ray_c.info()
        out["info"] = {"latent_dim": info.latent_dim, "rates": info.sample_rates}
    return out


def health_reflection_auth(target: str) -> dict[str, Any]:
    with grpc.insecure_channel(target) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
        )
        services = [s.name for s in reply.list_services_response.service]
    with Client(target, timeout=10) as c:  # no token
        try:
            c.info()
            unauthenticated = "OK"
        except DistillError as exc:
            unauthenticated = exc.code.name
        try:
            list(c.stream("crossfade", 1.0))
            stream_unauthenticated = "OK"
        except DistillError as exc:
            stream_unauthenticated = exc.code.name
    return {
        "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
        "reflection_services": services,
        "no_token": unauthenticated,
        "no_token_stream": stream_unauthenticated,
    }


def models(ray_target: str, plain_b: str) -> dict[str, Any]:
    """Model ``b`` through Ray equals a plain server of ``b``, while calls alternate between
    the two models on replicas that hold one model each (Serve's multiplexer evicts and
    reloads); the model control of a plain server is refused, names are checked."""
    import grpc as _grpc

    from distill_serve.v1 import distill_pb2 as pb
    from distill_serve.v1 import distill_pb2_grpc as pb_grpc

    out: dict[str, Any] = {}
    kw = {"timeout": 300, "token": TOKEN}
    with Client(ray_target, **kw) as ray_c, Client(plain_b, **kw) as plain_c:  # type: ignore[arg-type]
        spec = {"seed": 4, "sample_rate": 48000, "encoding": "float32"}
        want_b = plain_c.generate("crossfade", 1.5, **spec).audio
        same, differs = [], []
        for model in ("b", "a", "b", "a", "b"):
            got = ray_c.generate("crossfade", 1.5, model=model, **spec).audio
            streamed = ray_c.generate_streamed("crossfade", 1.5, model=model, **spec).audio
            if model == "b":
                same.append(bool(np.array_equal(got, want_b) and np.array_equal(streamed, got)))
            else:
                differs.append(not np.array_equal(got, want_b))
        out["b_identical"] = same
        out["a_differs"] = differs
        out["info_b"] = ray_c.info(model="b").model
        out["unknown"] = _status(lambda: ray_c.generate("crossfade", 1.0, model="zz"))
        out["listed"] = sorted(m.name for m in ray_c.list_models())
    with _grpc.insecure_channel(ray_target) as ch:
        stub = pb_grpc.DistillServiceStub(ch)
        md = [("authorization", f"Bearer {TOKEN}")]
        try:
            stub.Generate(
                pb.GenerateRequest(spec=pb.GenerationSpec(
                    mode=pb.CHUNK_MODE_CROSSFADE, duration_s=1.0, model="a")),
                metadata=[*md, ("multiplexed_model_id", "b")], timeout=120,
            )  # fmt: skip
            out["disagree"] = "OK"
        except _grpc.RpcError as exc:
            out["disagree"] = exc.code().name
        try:
            stub.LoadModel(pb.LoadModelRequest(name="b"), metadata=md, timeout=60)
            out["load"] = "OK"
        except _grpc.RpcError as exc:
            out["load"] = exc.code().name
    return out


def ray_metrics(expected_ok: int, timeout_s: float = 120.0) -> dict[str, Any]:
    """Our metrics in Ray's Prometheus export: ``ray_distill_requests_total`` from every
    replica, with the model label, until the OK requests it counts reach ``expected_ok``
    (what the scenarios before asked for: Ray exports every few seconds)."""
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    give_up = time.time() + timeout_s
    series: list[dict[str, str]] = []
    while time.time() < give_up:
        try:
            body = urllib.request.urlopen(url, timeout=10).read().decode()
        except OSError:
            body = ""
        series = [
            dict(re.findall(r'(\w+)="([^"]*)"', line.split("{", 1)[1].rsplit("}", 1)[0]))
            | {"value": line.rsplit(" ", 1)[1]}
            for line in body.splitlines()
            if line.startswith("ray_distill_requests_total{")
        ]
        replicas = {s["replica"] for s in series}
        models = {s["model"] for s in series}
        ok = sum(float(s["value"]) for s in series if s.get("status") == "OK")
        if len(replicas) >= 2 and {"a", "b"} <= models and ok >= expected_ok:
            break
        time.sleep(2.0)
    ok = [s for s in series if s.get("status") == "OK"]
    return {
        "replicas": sorted({s["replica"] for s in series}),
        "models": sorted({s["model"] for s in series}),
        "ok_requests": sum(float(s["value"]) for s in ok),
        "rpcs": sorted({s["rpc"] for s in series}),
    }


def _status(fn: Any) -> tuple[str, int | None]:
    try:
        fn()
        return "OK", None
    except DistillError as exc:
        return exc.code.name, exc.retry_after_ms


def limits_cancel_deadline(target: str) -> dict[str, Any]:
    """Two replicas of one slot each: two long streams fill them, a third request is
    refused; cancelling and a passed deadline give the slots back."""
    out: dict[str, Any] = {}
    with Client(target, timeout=120, token=TOKEN) as c:
        streams = [iter(c.stream("crossfade", 30.0, seed=i)) for i in range(2)]
        for s in streams:
            next(s)
        out["bad_spec"] = _status(lambda: c.generate("crossfade", -1.0))
        out["bad_spec_stream"] = _status(lambda: list(c.stream("crossfade", -1.0)))
        out["busy"] = _status(lambda: c.generate("crossfade", 1.0, seed=5))
        out["busy_stream"] = _status(lambda: list(c.stream("crossfade", 1.0, seed=5)))
        for s in streams:
            s.close()  # cancels the call
        time.sleep(1.0)
        out["after_cancel"] = [_status(lambda: c.generate("crossfade", 1.0, seed=6))[0]]
        out["deadline"] = _status(lambda: list(c.stream("crossfade", 30.0, seed=7, timeout=0.5)))
        # Both slots must be free again: hold one stream, then open a second (Ray routes it to
        # the replica with fewer requests, as with the two streams above). Two unary calls at
        # once could both be routed to one replica, which refuses the second whatever the
        # deadline did. How soon the replica sees the deadline depends on the machine's load,
        # so the check is repeated for up to a minute: it asserts that the slot comes back.
        give_up = time.time() + 60
        while True:
            time.sleep(1.0)
            after: list[str] = []
            held = []
            for k in range(2):
                try:
                    s = iter(c.stream("crossfade", 30.0, seed=10 + k))
                    next(s)
                    held.append(s)
                    after.append("OK")
                except DistillError as exc:
                    after.append(exc.code.name)
            for s in held:
                s.close()
            if after == ["OK", "OK"] or time.time() > give_up:
                break
        out["after_deadline"] = after
    return out


def _with_retry(fn: Any, tries: int = 240) -> Any:
    """Call ``fn``, honouring RESOURCE_EXHAUSTED's retry hint, as a client would."""
    for _ in range(tries):
        try:
            return fn()
        except DistillError as exc:
            if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED or exc.retry_after_ms is None:
                raise
            time.sleep(exc.retry_after_ms / 1000)
    return fn()


def replica_kill(target: str) -> dict[str, Any]:
    """Two long streams, one per replica (one slot each; a refused one retries on the hint
    and lands on the other), then one replica is killed while both are in flight."""
    import ray
    from ray import serve

    replicas = [
        a for a in ray.util.list_named_actors(all_namespaces=True) if "REPLICA" in a["name"]
    ]
    results: dict[int, Any] = {}
    playing = threading.Barrier(3)

    def stream(i: int) -> None:
        # A 40 s clip under a full CPU load can take minutes: the deadline only guards a hang.
        with Client(target, timeout=900, token=TOKEN) as c:

            def start() -> Any:  # the call is made at the first block: retry up to there
                blocks = iter(c.stream("crossfade", 40.0, seed=i))
                next(blocks)
                return blocks

            blocks = _with_retry(start)
            try:
                playing.wait(60)
                results[i] = ["OK", None, 1 + sum(1 for _ in blocks)]
            except DistillError as exc:
                results[i] = [exc.code.name, exc.retry_after_ms, exc.details[:120]]

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    playing.wait(60)  # both streams have their first block: each replica holds one
    victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
    ray.kill(victim, no_restart=True)
    killed_at = time.time()
    running = 0
    while time.time() - killed_at < 300:  # until a new replica replaced the killed one
        state = serve.status().applications["distill"].deployments["DistillDeployment"]
        running = state.replica_states.get("RUNNING", 0)
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
        if (
            running == 2
            and replicas[0]["name"] not in names
            and len([n for n in names if "REPLICA" in n]) == 2
        ):
            break
        time.sleep(0.5)
    recovered = round(time.time() - killed_at, 1)
    with Client(target, timeout=60, token=TOKEN) as c:
        new = [
            _status(lambda: _with_retry(lambda: c.generate("crossfade", 1.0, seed=1)))[0]
            for _ in range(3)
        ]
    for t in threads:
        t.join(900)
    return {
        "streams": results,
        "new_requests": new,
        "replicas_running": running,
        "recovered_in_s": recovered,
        "hung": any(t.is_alive() for t in threads),
    }


def ray_niceness() -> dict[str, int]:
    """The niceness of each of Ray's worker processes (replicas, Serve's proxy and
    controller), read from ``/proc`` (this runs in its own PID namespace: they are Ray's)."""
    out: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
            if title.startswith("ray::"):
                out[f"{proc.name} {title[:80]}"] = os.getpriority(os.PRIO_PROCESS, int(proc.name))
        except (OSError, ValueError, IndexError):
            continue  # not a process, or it ended
    return out


def _progress(what: str) -> None:
    """One line on stderr per phase, with the time: what the test shows when a phase hangs."""
    print(f"[ray_scenarios {time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def main(models_dir: str, out_path: str) -> int:
    engine = EngineConfig(use_cuda=False)
    limits = Limits(max_concurrent=1, max_waiting=0)  # busy replicas refuse at once
    result: dict[str, Any] = {"phase_s": {}}
    started = time.perf_counter()
    _progress("starting Ray and deploying")
    ray_config = RayConfig(replicas=2, max_models_per_replica=1, metrics_export_port=METRICS_PORT)
    start(
        Path(models_dir), engine, limits, (TOKEN,), ray_config, "127.0.0.1", PORT,
        repository=True, default_model="a",
    )  # fmt: skip
    result["ray_start_s"] = round(time.perf_counter() - started, 1)
    result["phase_s"]["ray_start"] = result["ray_start_s"]
    _progress(f"deployed in {result['ray_start_s']} s")
    result["niceness"] = ray_niceness()
    from tests.conftest import ServerThread

    def plain_server(name: str) -> ServerThread:
        config = ServerConfig(port=0, limits=Limits(max_concurrent=4), auth_tokens=(TOKEN,))
        return ServerThread(config, Engine.from_dir(Path(models_dir) / name, engine))

    plain, plain_b = plain_server("a"), plain_server("b")
    ray_target = f"127.0.0.1:{PORT}"
    for name, fn in (
        ("equivalence", lambda: equivalence(ray_target, plain.target)),
        ("health_reflection_auth", lambda: health_reflection_auth(ray_target)),
        ("limits", lambda: limits_cancel_deadline(ray_target)),
        ("models", lambda: models(ray_target, plain_b.target)),
        # OK so far: 6 in the equivalence (3 modes, unary and stream) and 10 in the models
        ("ray_metrics", lambda: ray_metrics(expected_ok=16)),
        ("replica_kill", lambda: replica_kill(ray_target)),
    ):
        began = time.perf_counter()
        _progress(f"{name}: started")
        try:
            result[name] = fn()
        except Exception as exc:  # recorded for the test to report
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        result["phase_s"][name] = round(time.perf_counter() - began, 1)
        _progress(f"{name}: {result['phase_s'][name]} s")
        Path(out_path).write_text(json.dumps(result, indent=2))
    plain.stop()
    plain_b.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
