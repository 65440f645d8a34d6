"""Bundle files stay inside their bundle folder: a re-sealed manifest naming ``..``, an
absolute path, or a file that is a symlink out of the folder is refused at load, naming the
path (issue 40's probe loaded such bundles READY and hashed a system file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distill_serve.bundle import BundleError, load_bundle, sha256_file, write_manifest


def _copy_with(stand_in_bundle: Path, out: Path, path: str) -> Path:
    """A copy of the bundle whose decoder entry names ``path`` (hash and seal updated)."""
    shutil.copytree(stand_in_bundle, out)
    m = json.loads((out / "manifest.json").read_text())
    for f in m["files"]:
        if f["path"] == "decoder.onnx":
            f["path"] = path
            target = Path(path) if Path(path).is_absolute() else out / path
            f["sha256"] = sha256_file(target)
    write_manifest(out, m)
    return out


def test_a_bundle_loads_with_its_own_files(stand_in_bundle: Path) -> None:
    assert load_bundle(stand_in_bundle).graph("decoder").is_file()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_paths_out_of_the_bundle_are_refused(
    stand_in_bundle: Path, tmp_path: Path, kind: str
) -> None:
    outside = tmp_path / "outside.onnx"
    shutil.copy(stand_in_bundle / "decoder.onnx", outside)
    if kind == "dotdot":
        bundle = _copy_with(stand_in_bundle, tmp_path / "b", "../outside.onnx")
        needle = "must be relative to the bundle folder"
    elif kind == "absolute":
        bundle = _copy_with(stand_in_bundle, tmp_path / "b", str(outside))
        needle = "must be relative to the bundle folder"
    else:
        bundle = tmp_path / "b"
        shutil.copytree(stand_in_bundle, bundle)
        (bundle / "decoder.onnx").unlink()
        (bundle / "decoder.onnx").symlink_to(outside)
        needle = "outside the bundle folder"
    with pytest.raises(BundleError, match=needle) as info:
        load_bundle(bundle)
    assert "\n" not in str(info.value)


def test_a_symlinked_bundle_folder_is_fine(stand_in_bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(stand_in_bundle, target_is_directory=True)
    assert load_bundle(tmp_path / "link").bundle_id == load_bundle(stand_in_bundle).bundle_id
