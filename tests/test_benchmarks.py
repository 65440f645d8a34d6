"""`python -m benchmarks --quick` runs as a smoke check (it asserts no speed thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory: pytest.TempPathFactory, stand_in_bundle: Path) -> Path:
    """One vocoder cache for both benchmark runs, seeded with the stand-in bundle's vocoder
    graphs (the benchmarks' 'demo' architecture): only the CUDA run's plain ONNX graph is
    exported, once."""
    from benchmarks.vocoder import seed_from_bundle

    cache = tmp_path_factory.mktemp("bench-cache")
    assert seed_from_bundle("demo", cache, stand_in_bundle)
    return cache


def test_quick_benchmark_writes_results(
    stand_in_bundle: Path, bench_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--bundle",
            str(stand_in_bundle),
            "--cache",
            str(bench_cache),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout)
    result = json.loads(out.read_text())
    assert result["machine"]["cores"] and result["quick"] is True
    vocoder = result["vocoder"][0]
    for key in (
        "rtf_torch_eager",
        "rtf_ort_cpu",
        "rtf_ort_int8",
        "rtf_torchscript",
        "speedup_ort_vs_eager",
    ):
        assert vocoder[key] > 0
    assert 20.0 < vocoder["int8_snr_db"] < 90.0
    assert {r["mode"] for r in result["latency"]} == {"crossfade", "latent_interp", "slider"}
    report = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "| demo (0.96 M) | 1 s |" in report and "| crossfade | 1 s |" in report
    assert all(0 < r["stream_first_audio_s"] <= r["stream_total_s"] for r in result["latency"])
    assert [r["clients"] for r in result["throughput"]] == [1, 2]
    assert result["memory"]["idle_mb"] > 0
    live = result["live"]
    assert live["control_latency"][0]["changes"] == 3
    assert live["control_latency"][0]["control_to_block_p50_s"] > 0
    assert live["capacity"][0]["sessions"] == 1


@pytest.mark.realtime  # its ladders hold a live session in real time on the CPU stand-in
def test_cuda_benchmark_dry_run_covers_every_step(
    stand_in_bundle: Path, bench_cache: Path, tmp_path: Path
) -> None:
    """The GPU benchmark with CPU stand-ins: every step runs, so device time is not spent
    finding a bug in the script."""
    out = tmp_path / "cuda.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--cuda", "--dry-run-cpu", "--demo-bundle",
         str(stand_in_bundle), "--cache", str(bench_cache), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == {} and result["skipped"] == []
    assert result["provider"]["available"]
    assert set(result["shapes"]) == {"demo/ort_cuda"}
    assert result["vocoder"][0]["ort_cuda_vs_torch_cuda"] > 0
    served = result["served_demo"]
    assert set(served["cuda_vs_cpu_snr_db"]) == {"crossfade", "latent_interp", "slider"}
    assert [r["clients"] for r in served["cuda"]["throughput"]] == [1, 8]
    assert set(result["oom"]) == {"below_weights", "below_a_run"}
    scheduler = result["scheduler_demo"]
    assert scheduler["stream"]["vocoder_path"] == "stream"
    assert scheduler["block"]["vocoder_path"] == "block"
    for path in scheduler.values():
        assert path["live"]["held"] >= 1 and [r["clients"] for r in path["clients"]] == [1, 2]
    assert scheduler["stream"]["scheduler"]["runs"] > 0
    pool = result["state_pool"]  # the device path's stand-in, with its state pool and without
    assert pool["pool"]["pool"]["rows"] > 0 and pool["no_pool"]["pool"]["rows"] == 0
    # (the stand-in's device path makes its step sessions when first met, within the first
    # rung's sessions: what it holds on CPU says nothing; a GPU server makes them at start)
    assert pool["pool"]["live"]["ladder"] and pool["no_pool"]["live"]["ladder"]


def test_memory_benchmark_runs_every_variant(stand_in_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", str(stand_in_bundle), "--clients", "1",
         "--rounds", "1", "--seconds", "1", "--idle", "0.1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["before", "trim", "trim+no-ort-arena"]
    assert all(r["rss_peak_mb"] >= r["rss_idle_mb"] > 0 for r in rows)


def test_bounce_benchmark_runs(stand_in_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bounce.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bounce", "--bundle", str(stand_in_bundle),
         "--seconds", "4", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["bundles"].values()
    assert row["seek_bit_identical"] and row["seek_compared_s"] > 1.0
    assert row["speed_vs_real_time"] > 0 and row["seek_first_audio_s"] > 0


def test_web_benchmark_measures_both_edges(stand_in_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "web.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.web", "--bundle", str(stand_in_bundle),
         "--sessions", "1", "--seconds", "2", "--rounds", "2", "--starts", "2",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["bundles"].values()
    for edge in ("grpc", "websocket"):
        assert len(row["edges"][edge]["per_round_cpu_s_per_audio_s"]) == 2
        assert row["edges"][edge]["cpu_s_per_audio_s"] > 0
        assert all(f > 0 for f in row["edges"][edge]["first_audio_s"])
        assert len(row["edges"][edge]["alone_first_audio_s"]) == 2
    assert row["cpu_ratio_websocket_vs_grpc"] > 0


def test_cuda_benchmark_runs_only_the_steps_asked_for(
    stand_in_bundle: Path, tmp_path: Path
) -> None:
    """A second device call runs the scheduler steps alone (``--steps``)."""
    out = tmp_path / "cuda.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--cuda", "--dry-run-cpu", "--steps", "provider",
         "--demo-bundle", str(stand_in_bundle), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "provider" in result and result["skipped"] == [] and result["errors"] == {}
    assert not any(
        k.startswith(("shapes", "vocoder", "served", "oom", "scheduler")) for k in result
    )
