"""``python -m benchmarks.app_model OUT``: a bundle like a Distill user's: an app-shaped
``.distillgan`` (``export/app_files.py``) with a full-size per-model HiFi-GAN V2 vocoder (the
app's exact config, random weights: the same cost as a trained one), exported with its own
vocoder (``--vocoder auto``). The serving benchmarks compare it with the demo bundle."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from distill_serve.export.app_files import app_model_dict, app_vocoder_state, write_app_model
from distill_serve.export.exporter import ExportConfig, export_bundle

SEED = 1234


def build(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="distill-app-") as tmp:
        model = write_app_model(
            Path(tmp) / "per-model-v2.distillgan",
            app_model_dict(seed=SEED, vocoder_state=app_vocoder_state(seed=SEED, epochs=200)),
        )
        export_bundle(
            ExportConfig(
                checkpoint=model,
                vocoder="auto",
                out=out,
                progress=False,
                extra_metadata={"benchmark": "per-model HiFi-GAN V2, random weights"},
            )
        )


if __name__ == "__main__":
    build(Path(sys.argv[1]))
