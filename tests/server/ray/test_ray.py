"""distill-serve on Ray Serve (two replicas behind Serve's gRPC proxy, a repository of two
models multiplexed one per replica) against plain servers of the same bundles: equivalence,
models, our metrics in Ray's export, health, reflection, auth, limits, cancellation,
deadlines and a replica killed under load.

Everything runs in one subprocess inside new network and PID namespaces (``unshare``): the
network has only loopback, because Ray binds every interface and rewrites 127.0.0.1 to the
host's address, so it must never run on the host's network; and no Ray process outlives the
scenario process or the test that kills it. See tests/server/ray/ray_scenarios.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[3]


def _namespace_problem() -> str | None:
    if not all(shutil.which(tool) for tool in ("setpriv", "unshare", "ip")):
        return "setpriv, unshare (util-linux) and ip (iproute2) are needed for the namespaces"
    probe = subprocess.run(
        [*NAMESPACE, "ip", "link", "set", "lo", "up"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.strip()} (needs root)"
    return None


@pytest.fixture(scope="module")
def ray_run(
    stand_in_bundle: Path, tmp_path_factory: pytest.TempPathFactory, report
) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    pytest.importorskip("ray.serve", reason="Ray Serve is in the dev extra (distill-serve[ray])")
    problem = _namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    from tests.server.engine.test_faults import other_model

    work = tmp_path_factory.mktemp("ray")
    out = work / "result.json"
    models = work / "models"
    models.mkdir()
    (models / "a").symlink_to(stand_in_bundle, target_is_directory=True)
    other_model(stand_in_bundle, models / "b", seed=99)
    env = dict(os.environ, PYTHONPATH=str(ROOT), **RAY_ENV)
    env.pop("RAY_ADDRESS", None)
    command = (
        f"ip link set lo up && {sys.executable} -m tests.server.ray.ray_scenarios {models} {out}"
    )
    log = work / "scenarios.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [*NAMESPACE, "sh", "-c", command], cwd=ROOT, env=env, stdout=sink, stderr=sink
        )
        try:
            proc.wait(timeout=SCENARIO_LIMIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()  # unshare's --kill-child then ends every process of the namespace
            proc.wait()
    text = log.read_text()
    progress = "\n".join(line for line in text.splitlines() if "[ray_scenarios" in line)
    tail = text[-3000:]
    assert out.exists(), f"the scenarios wrote nothing (exit {proc.returncode}):\n{tail}"
    result: dict[str, Any] = json.loads(out.read_text())
    result["_log"] = f"exit {proc.returncode}; phases:\n{progress}\n--- log tail ---\n{tail}"
    report(
        f"ray: started in {result['ray_start_s']} s; phases (s): {result['phase_s']}; "
        f"replica kill: {result.get('replica_kill')}"
    )
    return result


#: ``unshare``: a network namespace with only loopback (Ray binds every interface), and a PID
#: namespace whose processes (Ray's head, raylet, proxy, replicas) all end when the scenario
#: process does or when the test kills it: none outlives the test.
NAMESPACE = [
    "setpriv",
    "--pdeathsig",
    "KILL",
    "unshare",
    "-n",
    "-p",
    "--mount-proc",
    "--kill-child",
]

#: A hang guard for the whole scenario process: ~4 min idle on 2 cores.
SCENARIO_LIMIT_S = 1500


def phase(ray_run: dict[str, Any], name: str) -> dict[str, Any]:
    """One scenario's record; a clear failure, with every phase's time, if it did not run."""
    assert name in ray_run, f"the scenario {name!r} did not finish ({ray_run['_log']})"
    record: dict[str, Any] = ray_run[name]
    assert "error" not in record, f"{record} ({ray_run['_log']})"
    return record


def test_replicas_run_at_normal_priority(ray_run: dict[str, Any]) -> None:
    """Ray nices its workers to 15 unless told otherwise; a local head started by
    ``start`` runs them at 0 (``RayConfig.worker_niceness``), so a busy machine shares its
    cores with the replicas instead of starving them."""
    niceness = ray_run["niceness"]
    replicas = [k for k in niceness if "SERVE_REPLICA" in k or "ServeReplica" in k]
    assert len(replicas) == 2, niceness
    assert set(niceness.values()) == {0}, niceness


def test_every_mode_is_byte_identical_through_ray(ray_run: dict[str, Any]) -> None:
    eq = phase(ray_run, "equivalence")
    for mode in ("crossfade", "latent_interp", "slider"):
        assert eq[mode]["unary_identical"] and eq[mode]["stream_identical"], eq[mode]
        assert eq[mode]["shape"] == [2, round(2.2 * 48000)]
    assert eq["info"]["latent_dim"] == 64 and 48000 in eq["info"]["rates"]


def test_a_repository_through_serves_multiplexing(ray_run: dict[str, Any]) -> None:
    """Calls alternate between two models on replicas that keep one each: every reply of
    ``b`` equals a plain server's (unary and streamed), ``a`` is another model."""
    m = phase(ray_run, "models")
    assert m["b_identical"] == [True, True, True] and m["a_differs"] == [True, True]
    assert m["info_b"] == "b" and m["listed"] == ["a", "b"]
    assert m["unknown"][0] == "NOT_FOUND"
    assert m["disagree"] == "INVALID_ARGUMENT"
    assert m["load"] == "UNIMPLEMENTED"


def test_our_metrics_reach_rays_export_from_every_replica(ray_run: dict[str, Any]) -> None:
    metrics = phase(ray_run, "ray_metrics")
    assert len(metrics["replicas"]) == 2, metrics
    assert set(metrics["models"]) >= {"a", "b"}
    assert {"Generate", "GenerateStream"} <= set(metrics["rpcs"])
    assert metrics["ok_requests"] >= 16  # every OK call the scenarios before it made


def test_health_reflection_and_auth_through_the_proxy(ray_run: dict[str, Any]) -> None:
    h = phase(ray_run, "health_reflection_auth")
    assert h["health"] == "SERVING"
    assert "distill_serve.v1.DistillService" in h["reflection_services"]
    assert h["no_token"] == "UNAUTHENTICATED" and h["no_token_stream"] == "UNAUTHENTICATED"


def test_limits_cancellation_and_deadlines(ray_run: dict[str, Any]) -> None:
    lim = phase(ray_run, "limits")
    assert lim["bad_spec"][0] == "INVALID_ARGUMENT"
    assert lim["bad_spec_stream"][0] == "INVALID_ARGUMENT"
    assert lim["busy"] == ["RESOURCE_EXHAUSTED", 500]  # with the retry hint
    assert lim["busy_stream"] == ["RESOURCE_EXHAUSTED", 500]
    assert lim["after_cancel"] == ["OK"]  # cancelling freed the replicas' slots
    assert lim["deadline"][0] == "DEADLINE_EXCEEDED"
    assert lim["after_deadline"] == ["OK", "OK"]


def test_a_killed_replica_gives_retryable_errors_and_comes_back(ray_run: dict[str, Any]) -> None:
    kill = phase(ray_run, "replica_kill")
    assert not kill["hung"]
    outcomes = sorted(tuple(v[:2]) for v in kill["streams"].values())
    # the stream on the killed replica: retryable, with the hint; the other one finished
    assert outcomes == [("OK", None), ("UNAVAILABLE", 500)], kill["streams"]
    assert kill["new_requests"] == ["OK", "OK", "OK"]
    assert kill["replicas_running"] == 2


def test_a_replica_loads_through_the_repository(stand_in_bundle: Path, tmp_path: Path) -> None:
    """What Serve awaits to start a replica, without a cluster: the default model loads
    through the repository as on a plain server, so one that does not load is FAILED with
    its reason and counted while the replica serves the others; a replica of one bundle that
    does not load fails (Serve reports it), and one that loads owns its engine."""
    ray_serve = pytest.importorskip("distill_serve.server.ray.serve")
    from distill_serve.server.engine.engine import EngineConfig
    from distill_serve.server.models.repository import ModelState
    from distill_serve.server.pipeline.request import Limits

    models = tmp_path / "models"
    models.mkdir()
    (models / "a").symlink_to(stand_in_bundle, target_is_directory=True)
    (models / "broken").mkdir()
    (models / "broken" / "manifest.json").write_text("{}")

    def replica(source: Path, **kw: Any) -> Any:
        made = ray_serve.DistillDeployment.__new__(ray_serve.DistillDeployment)
        asyncio.run(made.__init__(str(source), EngineConfig(use_cuda=False), Limits(), (), **kw))
        return made

    several = replica(models, repository=True, default_model="broken")
    broken = several._models.entry("broken")
    assert broken.state is ModelState.FAILED and broken.reason
    loads = several.metrics.registry.get_sample_value
    assert loads("distill_model_loads_total", {"model": "broken", "outcome": "failed"}) == 1
    assert several._models.entry("a").state is ModelState.UNLOADED  # loaded on demand
    with pytest.raises(RuntimeError, match="did not load"):
        replica(models / "broken")
    one = replica(stand_in_bundle)
    entry = one._models.entry("")
    assert entry.state is ModelState.READY and entry.owned
    assert (
        one.metrics.registry.get_sample_value(
            "distill_model_loads_total", {"model": entry.name, "outcome": "ok"}
        )
        == 1
    )
    one._models.close()


def test_app_from_config_builds_the_application(stand_in_bundle: Path) -> None:
    """What a Serve config file or KubeRay's RayService imports (binding needs no cluster)."""
    ray_serve = pytest.importorskip("distill_serve.server.ray.serve")
    pytest.importorskip("ray.serve")
    app = ray_serve.app_from_config({"bundle": str(stand_in_bundle), "replicas": 2})
    assert type(app).__name__ == "Application"
    repo = ray_serve.app_from_config({"models": str(stand_in_bundle.parent), "replicas": 2})
    assert type(repo).__name__ == "Application"
    with pytest.raises(ValueError, match="one of 'bundle' and 'models'"):
        ray_serve.app_from_config({"bundle": str(stand_in_bundle), "models": "x"})
    with pytest.raises(ValueError, match="unknown"):
        ray_serve.app_from_config({"bundle": str(stand_in_bundle), "replica": 2})
    with pytest.raises(ValueError, match="--min-replicas"):
        ray_serve.RayConfig(max_replicas=3)


#: Ray's own timeouts, loosened for a slow or loaded machine: Serve kills a proxy that is not
#: ready within 5 s three times running (its default), and under a full CPU load the proxy
#: took longer to start, so ``serve.start`` failed with ActorDiedError (2026-12-02).
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60",
}


CLI_SCRIPT = """
set -e
ip link set lo up
{py} -m distill_serve serve --ray --bundle {bundle} --replicas 2 --port 50311 > {log} 2>&1 &
server=$!
for i in $(seq 1000); do grep -q "gRPC on" {log} && break; kill -0 $server; sleep 0.5; done
{py} -m distill_serve info --server 127.0.0.1:50311
{py} -m distill_serve generate --server 127.0.0.1:50311 --mode slider --slider 0=3 \\
    --duration 2 --seed 4 --rate 48000 -o {out}/unary.wav
{py} -m distill_serve generate --server 127.0.0.1:50311 --mode crossfade --duration 1.5 \\
    --stream -o {out}/stream.wav
kill -TERM $server
wait $server
"""


def test_cli_against_serve_ray(stand_in_bundle: Path, tmp_path: Path) -> None:
    """`distill-serve serve --ray --replicas 2` answers the CLI's `info` and `generate`
    (its own Ray head, in its own loopback-only namespace), then stops on SIGTERM."""
    pytest.importorskip("ray.serve", reason="Ray Serve is in the dev extra (distill-serve[ray])")
    problem = _namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    log = tmp_path / "serve.log"
    script = CLI_SCRIPT.format(py=sys.executable, bundle=stand_in_bundle, log=log, out=tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), **RAY_ENV)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [*NAMESPACE, "sh", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )  # Ray's start: 20 s idle, over a minute with every core busy
    served = log.read_text() if log.exists() else ""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + served[-2000:]
    assert "latent_dim: 64" in proc.stdout
    assert "wrote" in proc.stdout and "(stream," in proc.stdout and "(unary," in proc.stdout
    assert "distill-serve on Ray Serve stopped" in served
    assert sf.info(str(tmp_path / "unary.wav")).frames == 2 * 48000
    assert sf.info(str(tmp_path / "stream.wav")).frames == round(1.5 * 44100)
