"""Train a bridge refiner (:mod:`distill_serve.export.refiner`) for one vocoder's mel space.

``python -m distill_serve.export.train_refiner --vocoder hifigan-universal --out
export/assets/hifigan-22k-80band.refiner`` (about 6 min on 2 cores) wrote the shipped refiner.

Data: the speech in ``data/speech/`` (12 utterances, 45 s at 16 kHz: a LibriVox reading and
CMU Sphinx test recordings; sources and licences in ``data/README.md``). The quality test's
recordings (``data/audio/``) are never used: they stay held out. Each utterance is taken at
three speeds (0.9, 1, 1.12: resampled as if recorded at another rate, so pitch and formants
move) and four gains (-20, -10, 0, +6 dB). Input: its Distill mel at 48 kHz through the linear
bridge; target: the vocoder mel of the same audio, on the same frame grid.

Loss: mean absolute log-mel error, each frame weighted by how far its loudest band is above the
log clip (silence would otherwise dominate). Each member trains alone from its own seed
(AdamW, cosine learning rate, batches of 256 frames); the refiner averages them. Runs are
deterministic on one machine: same seed, same weights.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio

from distill_serve.export.bridge import (
    MelBridge,
    VocoderMelConfig,
    decoder_log_mel,
    default_ridge,
    vocoder_log_mel,
)
from distill_serve.export.checkpoint import SpectrogramConfig
from distill_serve.export.demo import SPECTROGRAM_CONFIG
from distill_serve.export.refiner import (
    Refiner,
    RefinerConfig,
    pairing,
    with_postfilter,
    write_refiner,
)
from distill_serve.export.vocoder import load_vocoder
from distill_serve.geometry import FrameGeometry

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "data" / "speech"
SPEEDS = (0.9, 1.0, 1.12)
GAINS_DB = (-20.0, -10.0, 0.0, 6.0)
STEPS = 3000
MEMBERS = 8
HIDDEN = 256
BATCH = 256
LEARNING_RATE = 1e-3
#: Contrast postfilter strength (width 2 bands): the choice of the two-fold cross-validation in
#: ``python -m benchmarks.refiner_cv`` (best PESQ-WB on held-out speech whose MR-STFT is no
#: worse than the linear bridge's; docs/quality.md).
POSTFILTER = 0.3


def corpus_files(root: Path = DEFAULT_CORPUS) -> list[Path]:
    """The training recordings: every ``*.flac`` in ``root``."""
    return sorted(root.glob("*.flac"))


def load_corpus(
    files: list[Path], rate: int, speeds: tuple[float, ...] = SPEEDS
) -> list[np.ndarray]:
    """Each file as mono float32 at ``rate``, once per speed."""
    out = []
    for path in files:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
        mono = torch.from_numpy(audio.mean(axis=1))
        for speed in speeds:
            # Played back at speed x its rate: resample from sr * speed (pitch moves too).
            out.append(torchaudio.functional.resample(mono, round(sr * speed), rate).numpy())
    return out


def bridge_pairs(
    audio: np.ndarray, spec: SpectrogramConfig, mel: VocoderMelConfig, bridge: MelBridge
) -> tuple[np.ndarray, np.ndarray]:
    """``(T, num_mels)`` linear-bridge output and ``(T, num_mels)`` true vocoder mel of one
    clip at the decoder's rate, on the vocoder's frame grid (as a served request sees it)."""
    geometry = FrameGeometry(spec.sample_rate, spec.hop_length, mel.sample_rate, mel.hop_size)
    dec = decoder_log_mel(audio, spec)[None]
    mel_dec, positions = geometry.bridge_inputs(dec, audio.size / spec.sample_rate)
    with torch.no_grad():
        bridged = bridge(torch.from_numpy(mel_dec), torch.from_numpy(positions))[0].numpy()
    voc_audio = torchaudio.functional.resample(
        torch.from_numpy(audio), spec.sample_rate, mel.sample_rate
    ).numpy()
    target = vocoder_log_mel(voc_audio, mel)
    n = min(bridged.shape[1], target.shape[1])
    return bridged[:, :n].T, target[:, :n].T


def training_set(
    signals: list[np.ndarray],
    spec: SpectrogramConfig,
    mel: VocoderMelConfig,
    ridge: float,
    gains_db: tuple[float, ...] = GAINS_DB,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked ``(N, num_mels)`` inputs and targets of every signal at every gain."""
    bridge = MelBridge(spec, mel, ridge).eval()
    xs, ys = [], []
    for signal in signals:
        for gain in gains_db:
            x, y = bridge_pairs((signal * 10 ** (gain / 20)).astype(np.float32), spec, mel, bridge)
            xs.append(x)
            ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def train(
    x: torch.Tensor, y: torch.Tensor, config: RefinerConfig, steps: int = STEPS, seed: int = 0
) -> tuple[Refiner, list[float]]:
    """A refiner with ``config``'s shape and postfilter whose members trained (without the
    postfilter) from seeds ``seed``, ``seed + 1``, ...; returns it and each member's final
    loss."""
    refiner = Refiner(config)
    single = RefinerConfig(config.num_mels, config.log_clip, config.hidden, members=1)
    finals = []
    for i in range(config.members):
        torch.manual_seed(seed + i)
        member = Refiner(single)
        batches = torch.Generator().manual_seed(seed + i)
        opt = torch.optim.AdamW(member.parameters(), LEARNING_RATE, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        loss = torch.zeros(())
        for _ in range(steps):
            idx = torch.randint(0, len(x), (BATCH,), generator=batches)
            target = y[idx]
            weight = (target.max(dim=-1, keepdim=True).values - config.log_clip).clamp_min(0)
            out = member(x[idx][:, :, None])[:, :, 0]
            loss = ((out - target).abs() * weight / weight.mean().clamp_min(1e-6)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        refiner.members[i].load_state_dict(member.members[0].state_dict())
        finals.append(round(float(loss.detach()), 4))
    return refiner.eval(), finals


def mean_abs_error(refiner: Refiner, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((refiner(x[:, :, None])[:, :, 0] - y).abs().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distill_serve.export.train_refiner")
    p.add_argument("--vocoder", default="hifigan-universal", help="as export --vocoder")
    p.add_argument("--out", type=Path, required=True, help="the .refiner file to write")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="dir of *.flac speech")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--members", type=int, default=MEMBERS)
    p.add_argument(
        "--postfilter",
        type=float,
        default=POSTFILTER,
        help=f"contrast postfilter strength (default {POSTFILTER}; see benchmarks.refiner_cv)",
    )
    args = p.parse_args(argv)
    spec = SpectrogramConfig(**SPECTROGRAM_CONFIG)
    mel = load_vocoder(args.vocoder).mel
    ridge = default_ridge(spec, mel)
    start = time.perf_counter()
    files = corpus_files(args.corpus)
    signals = load_corpus(files, spec.sample_rate)
    x, y = training_set(signals, spec, mel, ridge)
    print(f"{len(x)} frames from {len(signals)} clips x {len(GAINS_DB)} gains", flush=True)
    config = RefinerConfig(mel.num_mels, mel.log_clip, HIDDEN, args.members, args.postfilter)
    refiner, finals = train(x, y, config, args.steps)
    before = float((x - y).abs().mean())
    after = mean_abs_error(with_postfilter(refiner, replace(config, postfilter=0.0)), x, y)
    postfiltered = mean_abs_error(refiner, x, y)
    training: dict[str, Any] = {
        "script": "python -m distill_serve.export.train_refiner",
        "vocoder": args.vocoder,
        "corpus": [f.name for f in files],
        "speeds": list(SPEEDS),
        "gains_db": list(GAINS_DB),
        "frames": len(x),
        "steps": args.steps,
        "batch": BATCH,
        "seeds": list(range(args.members)),
        "final_losses": finals,
        "train_log_mel_mae": {
            "linear_bridge": round(before, 4),
            "refined": round(after, 4),
            "refined_and_postfiltered": round(postfiltered, 4),
        },
        "held_out": "data/audio (the quality test's recordings)",
    }
    write_refiner(args.out, refiner, config, pairing(spec, mel, ridge), training)
    print(
        f"wrote {args.out} in {time.perf_counter() - start:.0f} s "
        f"(training log-mel MAE: linear bridge {before:.3f}, refined {after:.3f}, "
        f"with the postfilter {postfiltered:.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
