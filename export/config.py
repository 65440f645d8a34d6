"""Options of ``distill-serve export`` and the export's fixed numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_RATES = (16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)
FORMATS = ("onnx", "torchscript", "both")
PEAK_TARGET = 0.891
MAX_FRAMES = 1 << 20
#: Step sizes (frames) the server feeds the streaming vocoder: the live blocks' 8 and 16, and
#: 32 for fixed-length requests (fewer runs per second of audio).
STEP_FRAMES = (8, 16, 32)


class ExportError(RuntimeError):
    """An export that failed a check (parity below threshold, bad options)."""


@dataclass(frozen=True)
class ExportConfig:
    """Options of ``distill-serve export``.

    Attributes:
        checkpoint: the Distill model file (``.distillgan``, ``.distill`` or ``.sda``).
        vocoder: ``auto`` (the model file's own vocoder, as the app chooses; an error if it
            has none), ``bundled`` (the same, by name), or what
            :func:`distill_serve.export.vocoder.load_vocoder` takes: a BigVGAN Hugging Face
            id or local dir, ``hifigan-universal``, or a HiFi-GAN checkpoint.
        out: the bundle directory to write.
        format: "onnx", "torchscript" or "both" (ONNX is always written: the server runs it).
        rates: output sample rates to offer (a resampler graph each).
        parity_long_frames: vocoder frames of the long parity case.
        seed: seed of the random parity inputs.
        int8: also write ``vocoder.int8.onnx`` (dense convolutions in int8, see
            ``export/quantize.py``), checked against torch with its own, lower SNR bound.
        fp16: also write ``vocoder.fp16.onnx`` (convolutions in fp16, the rest fp32, see
            ``export/half.py``) for GPUs, checked against torch with its own SNR bound.
        refiner: the bridge's learned correction (``export/refiner.py``): "auto" (a packaged
            refiner trained for this decoder/vocoder mel pair, if there is one), "none" (the
            linear bridge), or a ``.refiner`` file, which must match the pair.
        stream: also write ``vocoder_stream.onnx``, the streaming (cached-convolution) step
            graph of the vocoder (``export/streaming.py``), checked step by step against the
            whole-clip vocoder (>= 100 dB).
    """

    checkpoint: Path
    vocoder: str
    out: Path
    format: str = "onnx"
    rates: tuple[int, ...] = DEFAULT_RATES
    parity_long_frames: int = 430
    seed: int = 0
    int8: bool = False
    fp16: bool = False
    refiner: str = "auto"
    stream: bool = True
    progress: bool = True
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        bad = [r for r in self.rates if not 8000 <= r <= 192000]
        if bad or not self.rates:
            raise ValueError(f"rates must be in [8000, 192000] Hz, got {list(self.rates)}")
