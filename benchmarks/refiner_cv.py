"""Cross-validation of the bridge refiner and its contrast postfilter on held-out speech.

The training speech (``data/speech/``) splits by source into two folds, the LibriVox reading
and the CMU Sphinx recordings. For each fold a refiner trains on the other
(:mod:`distill_serve.export.train_refiner`, same settings as the shipped one), and every
utterance of the fold goes through the served path with: the linear bridge; the refiner
without postfilter; the refiner with each postfilter strength and width of the grid. Scores as
in :mod:`benchmarks.quality` (PESQ-WB windowed mean, MR-STFT, both at 16 kHz), against
copy-synthesis. The quality test's recordings (``data/audio/``) are not used: they stay held
out for the final figures.

``python -m benchmarks.refiner_cv BUNDLE`` (a HiFi-GAN bundle: its vocoder graph is used)
prints the table and the chosen variant: the best PESQ-WB among those whose MR-STFT is no worse
than the linear bridge's. ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks import quality
from distill_serve.export.bridge import MelBridge, default_ridge
from distill_serve.export.checkpoint import SpectrogramConfig
from distill_serve.export.demo import SPECTROGRAM_CONFIG
from distill_serve.export.refiner import RefinerConfig, with_postfilter
from distill_serve.export.train_refiner import (
    HIDDEN,
    MEMBERS,
    STEPS,
    bridge_pairs,
    corpus_files,
    load_corpus,
    train,
    training_set,
)

GRID = [(0.0, 2.0)] + [(s, w) for w in (2.0, 4.0) for s in (0.1, 0.2, 0.3)]


def folds(files: list[Path]) -> dict[str, list[Path]]:
    """The corpus split by source (file-name prefix before the first underscore)."""
    out: dict[str, list[Path]] = {}
    for f in files:
        out.setdefault(f.stem.split("_")[0], []).append(f)
    return out


def run(bundle_dir: Path, steps: int = STEPS, members: int = MEMBERS) -> dict[str, list[dict]]:  # type: ignore[type-arg]
    bundle = quality.Bundle(bundle_dir)
    spec = SpectrogramConfig(**SPECTROGRAM_CONFIG)
    mel = quality.vocoder_mel_config(bundle.manifest)
    ridge = default_ridge(spec, mel)
    bridge = MelBridge(spec, mel, ridge).eval()
    split = folds(corpus_files())
    rows: dict[str, list[dict]] = {"copy": [], "linear": []}  # type: ignore[type-arg]
    for held, files in split.items():
        train_files = [f for name, fs in split.items() if name != held for f in fs]
        x, y = training_set(load_corpus(train_files, spec.sample_rate), spec, mel, ridge)
        config = RefinerConfig(mel.num_mels, mel.log_clip, HIDDEN, members)
        trained, _ = train(x, y, config, steps)
        variants = {}
        for strength, width in GRID:
            variant = with_postfilter(
                trained, replace(config, postfilter=strength, postfilter_width=width)
            )
            variants[f"refiner+pf{strength:g}/w{width:g}"] = variant
        for file in files:
            reference = quality.load(file, quality.SCORE_RATE)
            audio48 = quality.load(file, spec.sample_rate)
            n = round(audio48.size / spec.sample_rate * bundle.rate)
            copy = bundle.copy_synthesis(quality.load(file, bundle.rate))
            rows["copy"].append(_score(file, held, reference, copy, bundle.rate))
            linear, _ = bridge_pairs(audio48, spec, mel, bridge)
            mels = {"linear": linear.T[None]}
            for name, variant in variants.items():
                with torch.no_grad():
                    mels[name] = variant(torch.from_numpy(mels["linear"])).numpy()
            for name, m in mels.items():
                audio = bundle.vocode(m)[:n]
                rows.setdefault(name, []).append(_score(file, held, reference, audio, bundle.rate))
    return rows


def _score(file: Path, fold: str, reference: np.ndarray, audio: np.ndarray, rate: int) -> dict:  # type: ignore[type-arg]
    s = quality.score("speech_" + file.stem, "x", reference, audio, rate)
    return {"file": file.stem, "fold": fold, "pesq_wb": s.pesq_wb, "mrstft": s.mrstft}


def summary(rows: dict[str, list[dict]]) -> list[dict]:  # type: ignore[type-arg]
    copy = {r["file"]: r["pesq_wb"] for r in rows["copy"]}
    out = []
    for name, rs in rows.items():
        gaps = [r["pesq_wb"] - copy[r["file"]] for r in rs]
        out.append(
            {
                "path": name,
                "pesq_wb": round(float(np.mean([r["pesq_wb"] for r in rs])), 3),
                "gap_to_copy": round(float(np.mean(gaps)), 3),
                "mrstft": round(float(np.mean([r["mrstft"] for r in rs])), 3),
                "files": len(rs),
            }
        )
    return out


def choose(table: list[dict]) -> dict:  # type: ignore[type-arg]
    """The refiner variant with the best PESQ-WB among those whose MR-STFT is no worse than the
    linear bridge's (perceived quality, without trading away the spectrum's fit)."""
    linear = next(t for t in table if t["path"] == "linear")
    fair = [t for t in table if t["path"].startswith("refiner") and t["mrstft"] <= linear["mrstft"]]
    return max(fair, key=lambda t: t["pesq_wb"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.refiner_cv", description=__doc__)
    p.add_argument("bundle", type=Path, help="a HiFi-GAN bundle dir (its vocoder graph)")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--members", type=int, default=MEMBERS)
    p.add_argument("--json", type=Path, help="also write per-file scores and the summary here")
    args = p.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.bundle, args.steps, args.members)
    table = summary(rows)
    print(f"{'path':<24}{'PESQ-WB':>8}{'gap':>8}{'MR-STFT':>9}  ({table[0]['files']} utterances)")
    for t in table:
        print(f"{t['path']:<24}{t['pesq_wb']:>8.3f}{t['gap_to_copy']:>+8.3f}{t['mrstft']:>9.3f}")
    best = choose(table)
    print(f"chosen: {best['path']} ({time.perf_counter() - start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"summary": table, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
