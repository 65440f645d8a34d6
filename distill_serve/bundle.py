"""The model bundle contract: ``manifest.json`` and hashed graph files (no torch needed).

The export stage writes a bundle; the server reads it with :func:`load_bundle`, which
refuses a wrong format version, a missing file, a file hash mismatch or an edited manifest,
naming the file. The manifest is sealed: ``manifest_sha256`` is the digest of its canonical
JSON without the seal (file hashes included), and ``bundle_id`` is that digest's first 16 hex.
This detects corruption and edits, not a forger who re-seals (that needs signatures).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ROLES = (
    "decoder",
    "bridge",
    "vocoder",
    "vocoder_int8",
    "vocoder_fp16",
    "vocoder_stream",
    "resampler",
)
#: The vocoder graph's role for each precision a server can be asked to run.
VOCODER_ROLES: dict[str, str] = {"fp32": "vocoder", "int8": "vocoder_int8", "fp16": "vocoder_fp16"}
#: The streaming vocoder graph's ``end`` input (a clip's length in frames) for an open-ended
#: (live) stream: no clip reaches it (2**40 frames of 512 samples are ~800 years at 44.1 kHz,
#: and the graph's sample indices stay far inside int64). Graphs exported before the input
#: existed have no ``end`` (``manifest["vocoder"]["stream"]`` then has no ``tail_frames``).
STREAM_OPEN_END = 2**40
#: What to do when a bundle lacks an optional graph (others: re-export with that format).
MISSING_GRAPH_HINTS: dict[str, str] = {
    "vocoder_int8": "re-export it with `distill-serve export --int8`, "
    "or serve with --vocoder-precision fp32",
    "vocoder_fp16": "re-export it with `distill-serve export --fp16`, "
    "or serve with --vocoder-precision fp32",
}


class BundleError(ValueError):
    """A bundle that cannot be served; the message names the file and what to do."""


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class BundleFile:
    """One graph file of a bundle."""

    path: str
    role: str
    format: str  # "onnx" or "torchscript"
    sha256: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    rate: int | None = None  # output rate, for resamplers

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BundleFile:
        return cls(
            path=str(d["path"]),
            role=str(d["role"]),
            format=str(d["format"]),
            sha256=str(d["sha256"]),
            inputs=list(d.get("inputs", [])),
            outputs=list(d.get("outputs", [])),
            rate=d.get("rate"),
        )


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory and its manifest."""

    root: Path
    manifest: dict[str, Any]
    files: tuple[BundleFile, ...]

    def graph(self, role: str, fmt: str = "onnx", rate: int | None = None) -> Path:
        """Path of the graph with ``role`` (and output ``rate`` for resamplers)."""
        for f in self.files:
            if f.role == role and f.format == fmt and (rate is None or f.rate == rate):
                return self.root / f.path
        raise BundleError(
            f"{self.root / MANIFEST_NAME}: no {fmt} {role} graph"
            + (f" for {rate} Hz" if rate else "")
            + f"; {MISSING_GRAPH_HINTS.get(role, 're-export the bundle with that format')}"
        )

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])


SEAL_FIELDS = ("bundle_id", "manifest_sha256")


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON, the seal fields left out."""
    body = {k: v for k, v in manifest.items() if k not in SEAL_FIELDS}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def seal_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """Set ``manifest_sha256`` and ``bundle_id`` from the manifest's current contents."""
    digest = manifest_digest(manifest)
    manifest["manifest_sha256"] = digest
    manifest["bundle_id"] = digest[:16]
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Seal the manifest and write it as ``root/manifest.json``."""
    path = root / MANIFEST_NAME
    path.write_text(json.dumps(seal_manifest(manifest), indent=2) + "\n")
    return path


def _inside(root: Path, name: str, manifest_path: Path) -> Path:
    """``root / name`` for a relative ``name`` that stays inside ``root`` once symlinks are
    resolved; else a :class:`BundleError` naming the path."""
    relative = Path(name)
    if relative.is_absolute() or not name or ".." in relative.parts:
        raise BundleError(
            f"{manifest_path}: file path {name[:200]!r} must be relative to the bundle folder, "
            "without '..'; re-export the bundle"
        )
    path = root / relative
    real_root = root.resolve()
    if not path.resolve().is_relative_to(real_root):
        raise BundleError(
            f"{path}: resolves to {path.resolve()}, outside the bundle folder {real_root} "
            "(a symlink?); bundle files must lie inside it: copy them in"
        )
    return path


def load_bundle(root: str | Path, verify_hashes: bool = True) -> Bundle:
    """Read ``manifest.json`` and check format version, files and hashes.

    Raises:
        BundleError: naming the manifest or the file that is missing, altered or unknown.
    """
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(
            f"{manifest_path}: not found; pass a directory written by `distill-serve export`"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {version!r} is not supported "
            f"(this server reads {FORMAT_VERSION}); re-export the bundle with this version"
        )
    try:
        files = tuple(BundleFile.from_dict(d) for d in manifest["files"])
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{manifest_path}: malformed 'files' list ({exc})") from exc
    for f in files:
        if f.role not in ROLES:
            raise BundleError(f"{manifest_path}: unknown role {f.role!r} for {f.path}")
        path = _inside(root, f.path, manifest_path)
        if not path.is_file():
            raise BundleError(f"{path}: listed in the manifest but missing")
        if verify_hashes and sha256_file(path) != f.sha256:
            raise BundleError(
                f"{path}: sha256 does not match the manifest; the file was altered or "
                "corrupted, re-export the bundle"
            )
    if "manifest_sha256" not in manifest:
        raise BundleError(
            f"{manifest_path}: no manifest_sha256 seal (written by an exporter from before "
            "sealing); re-export the bundle"
        )
    digest = manifest_digest(manifest)
    if manifest.get("manifest_sha256") != digest or manifest.get("bundle_id") != digest[:16]:
        raise BundleError(
            f"{manifest_path}: contents do not match manifest_sha256; the manifest was edited "
            "or corrupted, re-export the bundle"
        )
    return Bundle(root=root, manifest=manifest, files=files)
