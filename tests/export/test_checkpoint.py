"""Safe checkpoint loading: every refusal says what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill_serve.export.checkpoint import CheckpointError, load_checkpoint
from distill_serve.export.demo import demo_checkpoint_dict, make_demo_checkpoint


class NotPlainData:
    """A class a checkpoint must not carry (unpickling it would run code)."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("pwned",))


def _save(tmp_path: Path, ckpt: dict, name: str = "m.distill") -> Path:  # type: ignore[type-arg]
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


def test_demo_checkpoint_loads_with_sliders(tmp_path: Path) -> None:
    ckpt = load_checkpoint(make_demo_checkpoint(tmp_path / "d.distill"))
    assert ckpt.latent_dim == 64 and (ckpt.height, ckpt.width) == (8, 6)
    assert ckpt.chunk_frames == 94
    assert ckpt.sliders is not None and ckpt.sliders.n_active_components == 8
    assert ckpt.sliders.labels[0] == "brightness"
    decoder = ckpt.build_decoder()
    with torch.no_grad():
        mel = decoder(torch.zeros(3, 64))
    assert mel.shape == (3, 128, 94)


def test_same_seed_same_weights() -> None:
    a, b = demo_checkpoint_dict(7), demo_checkpoint_dict(7)
    c = demo_checkpoint_dict(8)
    for key, value in a["model_state_dict"].items():
        assert torch.equal(value, b["model_state_dict"][key])
    assert not torch.equal(
        a["model_state_dict"]["decoder.fc.weight"], c["model_state_dict"]["decoder.fc.weight"]
    )
    np.testing.assert_array_equal(
        a["latent_analysis"]["pca_components"], b["latent_analysis"]["pca_components"]
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="something_else"), "format marker"),
        (lambda d: d.update(version=2), "newer than this exporter supports"),
        (lambda d: d["model_state_dict"].pop("decoder.deconvs.4.weight"), "lacks decoder keys"),
        (
            lambda d: d["model_state_dict"].update({"decoder.deconvs.8.bias": torch.zeros(5)}),
            "mis-shaped decoder weights",
        ),
        (
            lambda d: d["model_state_dict"].update({"decoder.fc.weight": torch.zeros(12288, 32)}),
            "latent_dim is 64",
        ),
        (lambda d: d.pop("spectrogram_config"), "missing spectrogram_config"),
        (lambda d: d["latent_analysis"].update(pca_mean=np.zeros(3)), "pca_mean has shape"),
        (lambda d: d.update(metadata=NotPlainData()), "not plain data"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    ckpt = demo_checkpoint_dict(1)
    mutate(ckpt)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(_save(tmp_path, ckpt))


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = make_demo_checkpoint(tmp_path / "t.distill")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_not_a_dict_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(_save(tmp_path, [1, 2, 3]))  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.distill")


def test_unsafe_pickle_never_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = demo_checkpoint_dict(1)
    ckpt["metadata"] = NotPlainData()
    with pytest.raises(CheckpointError):
        load_checkpoint(_save(tmp_path, ckpt))
    assert "pwned" not in capsys.readouterr().out
