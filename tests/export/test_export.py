"""The stand-in bundle written by ``distill-serve export --stand-in``: hashes, graphs, parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from distill_serve.bundle import (
    FORMAT_VERSION,
    BundleError,
    load_bundle,
    sha256_file,
    write_manifest,
)
from distill_serve.export import parity as parity_mod
from distill_serve.export.demo import make_demo_checkpoint
from distill_serve.export.exporter import DEFAULT_RATES, ExportConfig, ExportError, export_bundle
from distill_serve.export.hifigan import HiFiGANGenerator, write_local_dir
from distill_serve.export.resampler import PolyphaseResampler, reference_resample
from distill_serve.server.pipeline.resample import (
    ResamplerGeometry,
    StreamingResampler,
    resample_whole,
)
from tests.conftest import SMALL_HIFIGAN, manifest


def test_manifest_describes_bundle(stand_in_bundle: Path) -> None:
    m = manifest(stand_in_bundle)
    assert m["format_version"] == FORMAT_VERSION
    assert m["latent_dim"] == 64
    assert m["chunk"]["chunk_frames"] == 94 and m["chunk"]["hop_frames"] == 47
    assert m["decoder_mel"]["mel_scale"] == "htk" and m["vocoder_mel"]["mel_scale"] == "slaney"
    assert set(DEFAULT_RATES) <= set(m["sample_rates"])
    assert m["sliders"]["n_active_components"] == 8 and len(m["sliders"]["pca_mean"]) == 64
    assert {"torch", "onnx", "bigvgan", "distill_serve"} <= set(m["exporter"])
    assert m["vocoder"]["receptive_field_frames"] > 0
    assert m["bridge"]["refiner"] is None  # none is trained for BigVGAN's mel space
    roles = {(f["role"], f["format"]) for f in m["files"]}
    for role in ("decoder", "bridge", "vocoder", "resampler"):
        assert (role, "onnx") in roles and (role, "torchscript") in roles
    for f in m["files"]:
        if f["format"] == "onnx":
            assert f["inputs"] and f["outputs"] and f["inputs"][0]["shape"]


def test_hashes_match_files(stand_in_bundle: Path) -> None:
    for f in manifest(stand_in_bundle)["files"]:
        assert sha256_file(stand_in_bundle / f["path"]) == f["sha256"], f["path"]
    load_bundle(stand_in_bundle)  # the server's own check


def test_every_graph_passes_checker_and_loads(stand_in_bundle: Path) -> None:
    for f in manifest(stand_in_bundle)["files"]:
        path = stand_in_bundle / f["path"]
        if f["format"] == "onnx":
            onnx.checker.check_model(str(path), full_check=True)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            assert [i.name for i in session.get_inputs()] == [i["name"] for i in f["inputs"]]
        else:
            torch.jit.load(str(path))


def test_parity_meets_thresholds(stand_in_bundle: Path) -> None:
    results = manifest(stand_in_bundle)["parity"]
    assert len(results) == len(manifest(stand_in_bundle)["files"])
    for name, r in results.items():
        assert r["passed"], name
        assert r["min_snr_db"] >= r["threshold"]["min_snr_db"], name
        if r["role"] == "vocoder":
            assert r["min_snr_db"] >= 50.0
            names = {c["name"] for c in r["cases"]}
            assert "shortest_1frame" in names and any("430" in n for n in names)
        if r["role"] == "decoder":
            assert {"batch1", "batch8"} <= {c["name"] for c in r["cases"]}


@pytest.mark.parametrize("rate", [16000, 22050, 48000, 96000])
def test_exported_resampler_matches_torchaudio_across_blocks(
    stand_in_bundle: Path, rate: int
) -> None:
    m = manifest(stand_in_bundle)
    spec = m["resamplers"][str(rate)]
    geo = ResamplerGeometry.from_manifest(spec)
    session = ort.InferenceSession(
        str(stand_in_bundle / spec["file"]), providers=["CPUExecutionProvider"]
    )

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": x})[0]

    rng = np.random.default_rng(rate)
    t = np.arange(20000) / 44100
    x = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t), 0.1 * rng.standard_normal(t.size)])
    x = x.astype(np.float32)
    ref = reference_resample(torch.from_numpy(x), 44100, rate).numpy()
    whole = resample_whole(run, geo, x)
    assert whole.shape == ref.shape
    np.testing.assert_allclose(whole, ref, atol=2e-5)
    streamed = StreamingResampler(run, geo, channels=2)
    cuts = np.sort(rng.choice(np.arange(1, x.shape[1]), size=7, replace=False))
    pieces = [streamed.push(p) for p in np.split(x, cuts, axis=1)] + [streamed.flush()]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), ref, atol=2e-5)


def test_resampler_module_is_torchaudio() -> None:
    module = PolyphaseResampler(44100, 24000)
    x = torch.randn(1, 5000)
    g = ResamplerGeometry.from_manifest(module.spec.to_manifest())  # type: ignore[arg-type]
    out = resample_whole(lambda a: module(torch.from_numpy(a)).detach().numpy(), g, x.numpy())
    torch.testing.assert_close(
        torch.from_numpy(out), reference_resample(x, 44100, 24000), atol=1e-5, rtol=0
    )


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_flipped_byte_is_refused_naming_file(stand_in_bundle: Path, tmp_path: Path) -> None:
    b = _copy(stand_in_bundle, tmp_path)
    path = b / "vocoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"vocoder\.onnx: sha256 does not match"):
        load_bundle(b)


def test_missing_file_wrong_version_and_edited_manifest(
    stand_in_bundle: Path, tmp_path: Path
) -> None:
    b = _copy(stand_in_bundle, tmp_path)
    (b / "bridge.onnx").unlink()
    with pytest.raises(BundleError, match=r"bridge\.onnx: listed in the manifest but missing"):
        load_bundle(b)
    shutil.copyfile(stand_in_bundle / "bridge.onnx", b / "bridge.onnx")
    m = manifest(b)
    m["format_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        load_bundle(b)
    m["format_version"] = FORMAT_VERSION
    m["postprocess"]["peak_target"] = 2.0  # any edit breaks the seal
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"manifest\.json: contents do not match"):
        load_bundle(b)
    unsealed = {k: v for k, v in m.items() if k != "manifest_sha256"}
    (b / "manifest.json").write_text(json.dumps(unsealed))
    with pytest.raises(BundleError, match="no manifest_sha256 seal"):
        load_bundle(b)
    m["postprocess"]["peak_target"] = manifest(stand_in_bundle)["postprocess"]["peak_target"]
    m["files"][0]["sha256"] = "0" * 64
    write_manifest(b, m)  # re-sealed, so the file check itself is what fails
    with pytest.raises(BundleError, match="sha256 does not match"):
        load_bundle(b)
    with pytest.raises(BundleError, match=r"manifest\.json: not found"):
        load_bundle(tmp_path / "nothing")


def test_export_fails_when_parity_misses_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = make_demo_checkpoint(tmp_path / "d.distill", seed=2)
    torch.manual_seed(2)
    voc = write_local_dir(HiFiGANGenerator(SMALL_HIFIGAN), SMALL_HIFIGAN, tmp_path / "v")
    impossible = dict(parity_mod.THRESHOLDS)
    impossible["decoder"] = parity_mod.Threshold(min_snr_db=10_000.0, max_abs=0.0)
    monkeypatch.setattr(parity_mod, "THRESHOLDS", impossible)
    cfg = ExportConfig(
        checkpoint=ckpt,
        vocoder=str(voc),
        out=tmp_path / "b",
        rates=(44100, 16000),
        parity_long_frames=40,
        progress=False,
    )
    with pytest.raises(ExportError, match=r"parity check failed for decoder\.onnx"):
        export_bundle(cfg)
    written = manifest(tmp_path / "b")
    assert written["parity"]["decoder.onnx"]["passed"] is False


def test_export_config_refuses_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format must be one of"):
        ExportConfig(checkpoint=tmp_path, vocoder="x", out=tmp_path, format="tflite")
    with pytest.raises(ValueError, match="rates must be in"):
        ExportConfig(checkpoint=tmp_path, vocoder="x", out=tmp_path, rates=(100,))
