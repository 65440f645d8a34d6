"""`python -m benchmarks --quick` runs as a smoke check (it asserts no speed thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_results(demo_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--bundle",
            str(demo_bundle),
            "--cache",
            str(tmp_path / "cache"),
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
