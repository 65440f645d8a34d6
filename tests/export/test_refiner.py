"""The bridge refiner (export/refiner.py) and its training (export/train_refiner.py), without a
server: identity when untrained, the postfilter's algebra, the pairing check, the packaged file,
deterministic training that lowers the bridge's error on real speech."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from benchmarks import quality
from distill_serve.export.bridge import MelBridge, VocoderMelConfig, default_ridge
from distill_serve.export.checkpoint import SpectrogramConfig
from distill_serve.export.demo import SPECTROGRAM_CONFIG
from distill_serve.export.hifigan import packaged_paths
from distill_serve.export.refiner import (
    Refiner,
    RefinerConfig,
    RefinerError,
    choose_refiner,
    packaged_refiners,
    pairing,
    postfilter_matrix,
    read_refiner,
    write_refiner,
)
from distill_serve.export.train_refiner import (
    corpus_files,
    load_corpus,
    mean_abs_error,
    train,
    training_set,
)
from distill_serve.export.vocoder import FULL_44K_CONFIG

SPEC = SpectrogramConfig(**SPECTROGRAM_CONFIG)
BIGVGAN_MEL = VocoderMelConfig.from_config(FULL_44K_CONFIG)
CLIP = float(np.log(1e-5))


def hifigan_mel() -> VocoderMelConfig:
    config_path, _ = packaged_paths("hifigan-universal")
    return VocoderMelConfig.from_config(json.loads(config_path.read_text()))


def test_an_untrained_refiner_without_postfilter_is_the_identity() -> None:
    mel = torch.randn(2, 80, 7) * 2 - 5
    out = Refiner(RefinerConfig(80, CLIP, hidden=16, members=3)).eval()(mel)
    assert torch.equal(out, mel)


def test_postfilter_is_x_plus_strength_times_x_minus_its_gaussian_smoothing() -> None:
    x = np.random.default_rng(0).standard_normal((80, 5))
    want = x + 0.3 * (x - gaussian_filter1d(x, 2.0, axis=0, mode="nearest"))
    assert np.allclose(postfilter_matrix(80, 0.3, 2.0) @ x, want)
    flat = np.full((80, 1), -4.0)  # a flat frame has no contrast to enhance
    assert np.allclose(postfilter_matrix(80, 0.3, 2.0) @ flat, flat)
    mel = torch.from_numpy(x.T[None].transpose(0, 2, 1).astype(np.float32))
    refiner = Refiner(RefinerConfig(80, CLIP, hidden=8, members=1, postfilter=0.3)).eval()
    assert np.allclose(refiner(mel).detach().numpy()[0], want, atol=1e-5)


def test_file_round_trip_and_pairing_check(tmp_path: Path) -> None:
    config = RefinerConfig(80, CLIP, hidden=8, members=2, postfilter=0.1)
    refiner = Refiner(config)
    with torch.no_grad():
        for p in refiner.parameters():
            p.normal_()
    mel = hifigan_mel()
    ridge = default_ridge(SPEC, mel)
    path = tmp_path / "r.refiner"
    write_refiner(path, refiner, config, pairing(SPEC, mel, ridge), {"note": "test"})
    loaded = read_refiner(path)
    x = torch.randn(1, 80, 4) - 4
    assert torch.equal(loaded.build()(x), refiner.eval()(x))
    assert not torch.equal(loaded.build(postfilter=0.0)(x), loaded.build()(x))
    assert choose_refiner(str(path), SPEC, mel, ridge) is not None
    with pytest.raises(RefinerError, match="bridge_ridge") as err:
        choose_refiner(str(path), SPEC, mel, ridge * 2)
    assert "--refiner none" in str(err.value)
    with pytest.raises(RefinerError, match="no refiner file"):
        read_refiner(tmp_path / "missing.refiner")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(RefinerError, match="not a bridge refiner"):
        read_refiner(tmp_path / "other.pt")


def test_auto_finds_the_packaged_refiner_for_hifigan_and_none_for_bigvgan() -> None:
    assert packaged_refiners(), "export/assets/*.refiner is shipped"
    mel = hifigan_mel()
    found = choose_refiner("auto", SPEC, mel, default_ridge(SPEC, mel))
    assert found is not None
    assert found.training["held_out"].startswith("data/audio")
    assert not set(found.training["corpus"]) & {p.name for p in quality.recordings()}
    assert choose_refiner("auto", SPEC, BIGVGAN_MEL, default_ridge(SPEC, BIGVGAN_MEL)) is None
    assert choose_refiner("none", SPEC, mel, default_ridge(SPEC, mel)) is None


def test_bridge_applies_the_refiner_last() -> None:
    mel = hifigan_mel()
    refiner = read_refiner(packaged_refiners()[0]).build()
    linear = MelBridge(SPEC, mel).eval()
    refined = MelBridge(SPEC, mel, refiner=refiner).eval()
    dec = torch.rand(1, 128, 30) * 3
    positions = torch.arange(20.0)
    with torch.no_grad():
        want = refiner(linear(dec, positions))
        assert torch.allclose(refined(dec, positions), want)
        assert torch.allclose(torch.jit.script(refined)(dec, positions), want, atol=1e-5)


def test_training_is_deterministic_and_lowers_the_error_on_speech() -> None:
    mel = hifigan_mel()
    ridge = default_ridge(SPEC, mel)
    files = corpus_files()
    assert len(files) >= 10 and all(f.parent.name == "speech" for f in files)
    signals = load_corpus(files[:2], SPEC.sample_rate, speeds=(1.0,))
    x, y = training_set(signals, SPEC, mel, ridge, gains_db=(0.0,))
    config = RefinerConfig(mel.num_mels, mel.log_clip, hidden=32, members=2)
    a, _ = train(x, y, config, steps=150, seed=3)
    b, _ = train(x, y, config, steps=150, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert mean_abs_error(a, x, y) < 0.9 * float((x - y).abs().mean())


def test_cross_validation_folds_by_source_and_chooses_by_the_stated_rule() -> None:
    from benchmarks.refiner_cv import choose, folds

    split = folds(corpus_files())
    assert set(split) == {"librivox", "cmusphinx"}
    assert sum(len(v) for v in split.values()) == len(corpus_files())
    table = [
        {"path": "linear", "pesq_wb": 2.4, "mrstft": 1.14},
        {"path": "refiner+pf0.3/w4", "pesq_wb": 2.62, "mrstft": 1.15},  # fits worse: excluded
        {"path": "refiner+pf0.3/w2", "pesq_wb": 2.60, "mrstft": 1.137},
        {"path": "refiner+pf0/w2", "pesq_wb": 2.49, "mrstft": 1.138},
    ]
    assert choose(table)["path"] == "refiner+pf0.3/w2"
