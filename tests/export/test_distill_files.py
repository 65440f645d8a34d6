"""The model files Distill users have (``shared/DISTILL.md``), written as the app writes them:
every released format exports, with the app's pickled enum and nothing else; the unreleased
branch formats, a truncated file, an unknown pickled class and a per-model vocoder that does
not fit are refused in one line that says why; the per-model vocoder is chosen as the app
chooses it and fed the decoder's own mel."""

from __future__ import annotations

import enum
import logging
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from distill_serve.export.app_files import (
    SMALL_V2,
    app_model_dict,
    app_vocoder_state,
    write_app_model,
)
from distill_serve.export.bundled_vocoder import bundled_vocoder, choose_vocoder
from distill_serve.export.checkpoint import CheckpointError, load_checkpoint
from distill_serve.export.distill_file import read_file
from distill_serve.export.exporter import ExportConfig, ExportError, export_bundle
from distill_serve.export.vocoder import VocoderError


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "\x1b" not in text, text
    return text


@pytest.mark.parametrize(
    ("marker", "suffix", "release"),
    [
        ("distillgan_model", ".distillgan", "v1.1"),
        ("distill_model", ".distill", "v1.0"),
        ("sda_model", ".sda", "MVP"),
    ],
)
def test_every_released_format_loads_with_the_apps_enum(
    tmp_path: Path, marker: str, suffix: str, release: str
) -> None:
    path = write_app_model(tmp_path / f"m{suffix}", app_model_dict(marker))
    # the file pickles the app's enum by name; the app itself is not installed here
    assert not any(m.split(".")[0] in ("distill", "small_dataset_audio") for m in sys.modules)
    assert b"OverfittingPreset" in path.read_bytes()
    ckpt = load_checkpoint(path)
    assert release in ckpt.format.release and ckpt.format.extension == suffix
    assert ckpt.training_config["preset"].value == "balanced"
    assert ckpt.training_config["regularization"]["dropout"] == 0.2
    assert ckpt.metadata["name"] == "Rain on Tin" and ckpt.latent_dim == 64
    assert ckpt.sliders is not None and ckpt.sliders.n_active_components == 8


def test_latent_dim_comes_from_the_file(tmp_path: Path) -> None:
    ckpt = load_checkpoint(
        write_app_model(tmp_path / "m.distillgan", app_model_dict(latent_dim=32))
    )
    assert ckpt.latent_dim == 32
    with torch.no_grad():
        assert ckpt.build_decoder()(torch.zeros(2, 32)).shape == (2, 128, 94)


def test_a_file_without_latent_analysis_has_no_sliders(tmp_path: Path) -> None:
    ckpt = load_checkpoint(
        write_app_model(tmp_path / "m.distillgan", app_model_dict(analysis=False))
    )
    assert ckpt.sliders is None


class _Payload(enum.Enum):
    """An enum that is not the app's (a file must not smuggle classes in)."""

    A = "a"


def test_an_unknown_pickled_class_is_refused_by_name(tmp_path: Path) -> None:
    module = types.ModuleType("evil_pkg")
    _Payload.__module__ = "evil_pkg"
    module.__dict__["_Payload"] = _Payload
    sys.modules["evil_pkg"] = module
    try:
        saved = app_model_dict()
        saved["metadata"]["tags"] = [_Payload.A]
        path = write_app_model(tmp_path / "m.distillgan", saved)
    finally:
        del sys.modules["evil_pkg"]
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = _one_line(info.value)
    assert "evil_pkg._Payload" in text and "not plain data" in text
    assert "Weights only load failed" not in text


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ({"normalization_stats": {"mean": np.zeros(2)}}, "complex-spectrogram"),
        ({"format": "distill_model", "version": 2, "model_type": "vqvae"}, "VQ-VAE"),
        ({"format": "some_other_model"}, "format marker"),
    ],
)
def test_unreleased_and_unknown_formats_say_what_they_are(
    tmp_path: Path, change: dict[str, Any], what: str
) -> None:
    path = write_app_model(tmp_path / "m.distillgan", {**app_model_dict(), **change})
    with pytest.raises(CheckpointError, match=what) as info:
        load_checkpoint(path)
    _one_line(info.value)


def test_a_truncated_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = write_app_model(tmp_path / "m.distillgan", app_model_dict())
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(path)
    _one_line(info.value)


def _with_vocoder(tmp_path: Path, **kw: Any) -> Path:
    config = {**SMALL_V2, **kw.pop("config", {})}
    state = app_vocoder_state(config, **kw)
    return write_app_model(tmp_path / "v.distillgan", app_model_dict(vocoder_state=state))


def test_the_per_model_vocoder_loads_with_its_weight_norm_folded(tmp_path: Path) -> None:
    ckpt = load_checkpoint(_with_vocoder(tmp_path))
    weights = ckpt.vocoder_state["generator_state_dict"]  # type: ignore[index]
    assert "conv_pre.weight_g" in weights and "conv_pre.weight_v" in weights
    vocoder = bundled_vocoder(ckpt)
    assert vocoder.family == "hifigan" and vocoder.mel.decoder_mel
    assert (vocoder.mel.sample_rate, vocoder.mel.hop_size, vocoder.mel.num_mels) == (
        48000,
        512,
        128,
    )
    with torch.no_grad():
        audio = vocoder.model(torch.zeros(1, 128, 4))
    assert audio.shape == (1, 1, 4 * 512)


def test_auto_chooses_the_files_own_vocoder_as_the_app_does(tmp_path: Path) -> None:
    with_one = load_checkpoint(_with_vocoder(tmp_path))
    _, why = choose_vocoder("auto", with_one)
    assert "own vocoder" in why
    without = load_checkpoint(write_app_model(tmp_path / "n.distillgan", app_model_dict()))
    with pytest.raises(VocoderError, match="no per-model vocoder") as info:
        choose_vocoder("auto", without)
    _one_line(info.value)


@pytest.mark.parametrize(
    ("build", "what"),
    [
        # the hop and the upsampling disagree with the model's mel (hop 512)
        ({"config": {"hop_size": 256, "upsample_rates": [8, 8, 2, 2]}}, "hop_size is 256"),
        ({"config": {"num_mels": 80}}, "num_mels is 80"),
        ({"config": {"sample_rate": 44100}}, "sample_rate is 44100"),
    ],
)
def test_a_vocoder_that_does_not_fit_its_model_is_refused(
    tmp_path: Path, build: dict[str, Any], what: str
) -> None:
    ckpt = load_checkpoint(_with_vocoder(tmp_path, **build))
    with pytest.raises(VocoderError, match=what) as info:
        bundled_vocoder(ckpt)
    _one_line(info.value)


def test_a_config_that_does_not_match_its_weights_is_refused(tmp_path: Path) -> None:
    path = _with_vocoder(tmp_path)
    saved = read_file(path)
    saved["vocoder_state"]["config"]["upsample_initial_channel"] = 64  # weights are 32
    write_app_model(path, saved)
    with pytest.raises(VocoderError, match="config does not match its weights") as info:
        bundled_vocoder(load_checkpoint(path))
    _one_line(info.value)


def test_an_export_that_fails_on_its_input_writes_nothing(tmp_path: Path) -> None:
    path = _with_vocoder(tmp_path, config={"num_mels": 80})
    out = tmp_path / "bundle"
    with pytest.raises(VocoderError):
        export_bundle(ExportConfig(checkpoint=path, vocoder="auto", out=out, progress=False))
    assert not out.exists()
    (tmp_path / "fits").mkdir()
    fits = _with_vocoder(tmp_path / "fits")  # a refiner has no bridge to correct here
    with pytest.raises(ExportError, match="leave --refiner out"):
        export_bundle(
            ExportConfig(
                checkpoint=fits, vocoder="auto", out=out, refiner=str(fits), progress=False
            )
        )
    assert not out.exists()


@pytest.mark.slow
def test_a_distillgan_exports_with_its_own_vocoder_fed_the_decoder_mel(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _with_vocoder(tmp_path, epochs=10)
    out = tmp_path / "bundle"
    with caplog.at_level(logging.WARNING):
        manifest = export_bundle(
            ExportConfig(
                checkpoint=path,
                vocoder="auto",
                out=out,
                rates=(44100, 48000),
                int8=True,  # the int8 and fp16 variants hold their own thresholds too
                fp16=True,
                progress=False,
            )
        )
    assert any("10 epochs" in r.getMessage() for r in caplog.records)  # as the app warns
    voc = manifest["vocoder"]
    assert "own vocoder" in voc["chosen"] and voc["family"] == "hifigan"
    assert voc["config"]["training_metadata"]["epochs"] == 10
    assert manifest["vocoder_mel"]["decoder_mel"] and manifest["geometry"]["vocoder_centre"] == 0.0
    assert (
        manifest["default_sample_rate"] == 48000 and "pass-through" in manifest["bridge"]["method"]
    )
    assert manifest["source"]["checkpoint_metadata"]["name"] == "Rain on Tin"
    assert all(r["passed"] for r in manifest["parity"].values())
    assert {"vocoder.int8.onnx", "vocoder.fp16.onnx"} <= set(manifest["parity"])
    assert manifest["parity"]["vocoder_stream.onnx"]["min_snr_db"] >= 100.0
    # the bridge hands the vocoder the decoder's frames unchanged
    import onnxruntime as ort

    bridge = ort.InferenceSession(str(out / "bridge.onnx"), providers=["CPUExecutionProvider"])
    mel = np.random.default_rng(0).random((1, 128, 12), np.float32) * 5
    positions = np.arange(10, dtype=np.float32)
    (got,) = bridge.run(None, {"mel_dec": mel, "positions": positions})
    np.testing.assert_array_equal(got, mel[:, :, :10])
