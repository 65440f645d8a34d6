"""The demo bundle: exported once (a small Distill model and HiFi-GAN's universal weights)
and cached for ``distill-serve demo`` and a server started without ``--bundle``."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from distill_serve.bundle import BundleError, load_bundle

log = logging.getLogger(__name__)


def demo_bundle_dir() -> Path:
    """Where the demo bundle is cached (``$DISTILL_SERVE_CACHE`` or ``~/.cache``)."""
    root = os.environ.get("DISTILL_SERVE_CACHE") or Path.home() / ".cache" / "distill-serve"
    return Path(root) / "demo-bundle-v8"


def ensure_demo_bundle(path: Path | None = None) -> Path:
    """Return a verified demo bundle, exporting it first if the cache has none."""
    path = path or demo_bundle_dir()
    try:
        load_bundle(path)
        return path
    except BundleError:
        pass
    try:
        from distill_serve.export.demo import export_demo_bundle
    except ImportError as exc:
        raise BundleError(
            f"no demo bundle at {path} and the export extra is not installed ({exc}); "
            "pip install 'distill-serve[export]' or pass --bundle DIR"
        ) from exc
    log.info("building the demo bundle in %s (once; under a minute)", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=path.parent))
    try:
        export_demo_bundle(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
