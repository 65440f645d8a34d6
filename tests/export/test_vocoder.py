"""BigVGAN loading from the official local-dir layout, and clear failures."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from distill_serve.export.demo import demo_vocoder_config, make_demo_vocoder
from distill_serve.export.vocoder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    VocoderError,
    load_vocoder,
    random_vocoder,
)


def test_local_dir_loads_without_weight_norm(tmp_path: Path) -> None:
    d = make_demo_vocoder(tmp_path / "voc", seed=3, channels=64)
    assert (d / CONFIG_FILE).is_file() and (d / WEIGHTS_FILE).is_file()
    v = load_vocoder(str(d))
    names = [n for n, _ in v.model.named_parameters()]
    assert not any(n.endswith(("weight_g", "weight_v")) for n in names)
    assert v.sample_rate == 44100 and v.hop_size == 512
    with torch.no_grad():
        audio = v.model(torch.randn(1, 128, 5))
    assert audio.shape == (1, 1, 5 * 512)


def test_same_seed_same_vocoder() -> None:
    cfg = demo_vocoder_config(64)
    a, b = random_vocoder(cfg, 5).state_dict(), random_vocoder(cfg, 5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_incomplete_dir_names_missing_file(tmp_path: Path) -> None:
    d = make_demo_vocoder(tmp_path / "voc", seed=3, channels=64)
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(VocoderError, match=WEIGHTS_FILE):
        load_vocoder(str(d))


def test_hub_id_offline_names_local_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(VocoderError, match="local dir") as info:
        load_vocoder("nvidia/bigvgan_v2_44khz_128band_512x")
    assert "--vocoder /path/to/bigvgan_dir" in str(info.value)
