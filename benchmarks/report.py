"""``python -m benchmarks.report RESULT.json``: the README's Markdown tables from one run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MODEL_NAMES = {"full_44k": "full 44 kHz (122 M)", "demo": "demo (0.96 M)"}


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]
    return "\n".join(lines)


def vocoder_table(rows: list[dict[str, Any]]) -> str:
    plain = all("rtf_ort_cpu_plain" in r for r in rows)
    header = ["model", "audio", "torch eager", "ORT CPU"]
    header += ["ORT plain graph"] if plain else []
    header += ["TorchScript", "ORT int8", "ORT vs eager"]
    header += ["rewrite gain"] if plain else []
    header += ["int8 vs fp32", "int8 SNR"]
    order = sorted(rows, key=lambda r: (r["model"] != "full_44k", r["audio_s"]))
    body = []
    for r in order:
        digits = 2 if r["model"] == "full_44k" else 3
        cells = [
            MODEL_NAMES.get(r["model"], r["model"]),
            f"{r['audio_s']:g} s",
            f"{r['rtf_torch_eager']:.{digits}f}",
            f"**{r['rtf_ort_cpu']:.{digits}f}**",
        ]
        cells += [f"{r['rtf_ort_cpu_plain']:.{digits}f}"] if plain else []
        cells += [
            f"{r['rtf_torchscript']:.{digits}f}",
            f"{r['rtf_ort_int8']:.{digits}f}",
            f"{r['speedup_ort_vs_eager']:.2f}x",
        ]
        cells += [f"{r['speedup_ort_vs_plain']:.2f}x"] if plain else []
        cells += [f"{r['speedup_int8_vs_fp32']:.2f}x", f"{r['int8_snr_db']:.1f} dB"]
        body.append(cells)
    return _table(header, body)


def peak_lines(result: dict[str, Any]) -> str:
    machine = result["machine"]
    fma, sgemm = machine.get("fma_peak_gflops"), machine.get("sgemm_4096_gflops")
    lines = []
    for r in result["vocoder"]:
        if "ort_gflops" not in r:
            continue
        pct = f"{100 * r['ort_gflops'] / fma:.0f} % of the FMA peak" if fma else ""
        pct_s = f"{100 * r['ort_gflops'] / sgemm:.0f} % of sgemm" if sgemm else ""
        lines.append(
            f"- {r['audio_s']:g} s: ORT fp32 {r['ort_gflops']:.0f} GFLOP/s ({pct}, {pct_s}); "
            f"int8 {r['int8_equiv_gflops']:.0f} GFLOP/s fp32-equivalent"
        )
    return "\n".join(lines)


def latency_table(rows: list[dict[str, Any]]) -> str:
    body = [
        [
            r["mode"],
            f"{r['audio_s']:g} s",
            f"{r['unary_s']:.3f}",
            f"{r['stream_first_audio_s']:.3f}",
            f"{r['stream_total_s']:.3f}",
            f"{r['first_audio_over_unary']:.2f}",
        ]
        for r in rows
    ]
    header = ["mode", "audio", "unary", "stream: first audio", "stream: total", "first / unary"]
    return _table(header, body)


def throughput_line(rows: list[dict[str, Any]]) -> str:
    parts = [
        f"{r['clients']} client{'s' if r['clients'] > 1 else ''} {r['audio_s_per_s']:.1f} "
        f"(per client {r['min_per_client']}-{r['max_per_client']} requests)"
        for r in rows
    ]
    return "; ".join(parts) + " audio seconds per second"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    p.add_argument("result", type=Path)
    args = p.parse_args(argv)
    result = json.loads(args.result.read_text())
    m = result["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, FMA peak {m.get('fma_peak_gflops')} GFLOP/s, "
        f"sgemm {m.get('sgemm_4096_gflops')} GFLOP/s, onnxruntime {m['onnxruntime']}, "
        f"{result['when']}\n"
    )
    print(vocoder_table(result["vocoder"]) + "\n")
    print(peak_lines(result) + "\n")
    print(latency_table(result["latency"]) + "\n")
    print(throughput_line(result["throughput"]) + "\n")
    print(f"server RSS (MB): {result['memory']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
