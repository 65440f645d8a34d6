"""The export's stages, in order: decoder, bridge, vocoder (and its streaming, int8 and fp16
graphs), resamplers, receptive field. Each writes its graphs and their parity into the
:class:`~distill_serve.export.run.ExportRun` it is given and returns what later stages use.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distill_serve.export.antialias import polyphase_activations
from distill_serve.export.bridge import DecoderMelPassThrough, MelBridge
from distill_serve.export.checkpoint import DistillCheckpoint
from distill_serve.export.config import MAX_FRAMES, STEP_FRAMES
from distill_serve.export.graphs import export_onnx, export_torchscript
from distill_serve.export.half import HalfReport, half_convolutions
from distill_serve.export.parity import ParityResult, check_parity
from distill_serve.export.quantize import QuantizeReport, quantize_vocoder
from distill_serve.export.refiner import RefinerFile
from distill_serve.export.resampler import PolyphaseResampler, reference_resample
from distill_serve.export.run import Cases, ExportRun
from distill_serve.export.runners import ort_runner, torch_runner
from distill_serve.export.stream_parity import stream_parity
from distill_serve.export.streaming import build_streaming, export_stream
from distill_serve.export.vocoder import LoadedVocoder
from distill_serve.geometry import FrameGeometry
from distill_serve.server.pipeline.resample import ResamplerGeometry, resample_whole

log = logging.getLogger(__name__)

BATCH = torch.export.Dim("batch", min=1, max=4096)


@dataclass
class VocoderParts:
    """What the vocoder stage leaves for the graphs made from the vocoder: a bridged mel
    (``(1, n_mels, 480)``), the parity cases, the torch reference, and the graph module with
    BigVGAN's activations rewritten (``rewritten`` of them)."""

    bridged: np.ndarray
    cases: Cases
    reference: Any
    graph_module: torch.nn.Module | None  # None once the graphs made from it are done
    rewritten: int


def decoder(run: ExportRun, ckpt: DistillCheckpoint) -> np.ndarray:
    """``decoder.onnx`` (dynamic batch); returns its mel of 8 random latents,
    ``(8, n_mels, T)``, for the bridge's cases."""
    module = ckpt.build_decoder()
    dim = ckpt.latent_dim
    cases: Cases = [
        (f"batch{b}", [run.rng.standard_normal((b, dim)).astype(np.float32)]) for b in (1, 8)
    ] + [("batch8_large", [(3 * run.rng.standard_normal((8, dim))).astype(np.float32)])]
    run.graph("decoder", module, [torch.zeros(2, dim)], (["z"], ["mel"]), [{0: BATCH}], cases)
    with torch.no_grad():
        return module(torch.from_numpy(cases[1][1][0])).numpy()


def bridge(
    run: ExportRun,
    ckpt: DistillCheckpoint,
    vocoder: LoadedVocoder,
    geometry: FrameGeometry,
    ridge: float,
    refiner: RefinerFile | None,
    dec_mel: np.ndarray,
) -> np.ndarray:
    """``bridge.onnx`` (decoder mel -> vocoder mel); returns 480 vocoder frames bridged from
    ``dec_mel`` (``(8, n_mels, T)`` decoded chunks, repeated), ``(1, n_mels_voc, 480)``,
    that the vocoder's stages test on."""
    module: torch.nn.Module = (
        DecoderMelPassThrough()
        if vocoder.mel.decoder_mel
        else MelBridge(
            ckpt.spectrogram, vocoder.mel, ridge, refiner.build() if refiner is not None else None
        )
    ).eval()

    def case(name: str, mel: np.ndarray, t_voc: int) -> tuple[str, list[np.ndarray]]:
        positions = geometry.bridge_positions(t_voc)
        return name, [mel[:, :, : geometry.decoder_frames_needed(t_voc)], positions]

    long_dec = np.concatenate([dec_mel] * 6, axis=2)
    cases = [
        case("batch1_short", dec_mel[:1], 2),
        case("batch8_1s", dec_mel, 80),
        case("batch1_long", long_dec[:1], 480),
    ]
    t_dec = torch.export.Dim("t_dec", min=2, max=MAX_FRAMES)
    t_voc = torch.export.Dim("t_voc", min=1, max=MAX_FRAMES)
    run.graph(
        "bridge",
        module,
        [torch.rand(2, ckpt.spectrogram.n_mels, 20), torch.arange(15.0)],
        (["mel_dec", "positions"], ["mel_voc"]),
        [{0: BATCH, 2: t_dec}, {0: t_voc}],
        cases,
        script=True,
    )
    with torch.no_grad():
        positions = torch.from_numpy(geometry.bridge_positions(480))
        return module(torch.from_numpy(long_dec[:1]), positions).numpy()


def vocoder_graph(run: ExportRun, vocoder: LoadedVocoder, bridged: np.ndarray) -> VocoderParts:
    """``vocoder.onnx`` (dynamic frames), checked on bridged, random and silent mels."""
    n_mels, long_t = vocoder.mel.num_mels, run.config.parity_long_frames
    cases: Cases = [
        ("shortest_1frame", [bridged[:, :, :1]]),
        ("bridged_86frames", [bridged[:, :, :86]]),
        (
            f"random_{long_t}frames",
            [(run.rng.standard_normal((1, n_mels, long_t)) * 2 - 4).astype(np.float32)],
        ),
        ("silence_8frames", [np.full((1, n_mels, 8), math.log(1e-5), np.float32)]),
    ]
    frames = torch.export.Dim("frames", min=1, max=MAX_FRAMES)
    # The graphs get BigVGAN's anti-aliased activations as polyphase convolutions (same
    # function, ~2x faster activations in onnxruntime); parity is against the original.
    graph_module, rewritten = polyphase_activations(vocoder.model)
    reference = run.graph(
        "vocoder",
        vocoder.model,
        [torch.randn(1, n_mels, 40)],
        (["mel"], ["audio"]),
        [{2: frames}],
        cases,
        graph_module=graph_module,
        traced_axes={"mel": {2: "frames"}, "audio": {2: "samples"}},
    )
    return VocoderParts(bridged, cases, reference, graph_module, rewritten)


def vocoder_stream(
    run: ExportRun, vocoder: LoadedVocoder, parts: VocoderParts
) -> tuple[dict[str, Any] | None, list[ParityResult]]:
    """``vocoder_stream.onnx``, the cached-convolution step graph, checked step by step
    against the whole-clip graph; returns its manifest entry (None: the family has none)
    and its parity against torch where that failed (recorded in the entry, not in the
    bundle's parity table)."""
    run.progress.step("export vocoder_stream.onnx")
    assert parts.graph_module is not None
    module = parts.graph_module if vocoder.family == "bigvgan" else vocoder.model
    streaming = build_streaming(module, vocoder.family, vocoder.mel.hop_size)
    entry, failed = None, []
    if streaming is not None:
        t0 = time.perf_counter()
        path = export_stream(streaming, vocoder.mel.num_mels, run.out / "vocoder_stream.onnx")
        run.timed(path.name, t0)
        run.parity[path.name], vs_torch, edges = stream_parity(
            path,
            run.out / "vocoder.onnx",
            streaming.layout,
            parts.bridged,
            parts.reference,
            run.rng,
        )
        run.add(path, "vocoder_stream", "onnx")
        entry = {
            **streaming.layout.to_manifest(),
            "file": path.name,
            "step_frames": list(STEP_FRAMES),
            "parity_vs_torch": vs_torch.to_dict(),
            "head_edge": edges["head"],
            "tail_edge": edges["tail"],
        }
        if not vs_torch.passed:
            failed.append(vs_torch)
    run.progress.done()
    return entry, failed


def vocoder_int8(run: ExportRun, parts: VocoderParts) -> QuantizeReport:
    """``vocoder.int8.onnx``: dense convolutions in int8, with its own parity bound."""
    run.progress.step("quantize vocoder.int8.onnx")
    # Short chunks: onnxruntime's calibrator keeps every intermediate tensor of every input
    # (~70 MB per frame for the full 44 kHz model), so ~120 frames in all.
    bridged = parts.bridged
    calibration = [bridged[:, :, i : i + 16] for i in range(0, bridged.shape[2] - 15, 80)]
    calibration.append(parts.cases[2][1][0][:, :, :16])  # random mel
    calibration.append(parts.cases[3][1][0])  # silence
    path = run.out / "vocoder.int8.onnx"
    t0 = time.perf_counter()
    report = quantize_vocoder(run.out / "vocoder.onnx", path, calibration)
    run.timed(path.name, t0)
    run.check(path, "vocoder_int8", parts.cases, parts.reference)
    run.progress.done()
    return report


def vocoder_fp16(run: ExportRun, parts: VocoderParts) -> HalfReport:
    """``vocoder.fp16.onnx``: convolutions in fp16 for GPUs, with its own parity bound."""
    run.progress.step("convert vocoder.fp16.onnx")
    path = run.out / "vocoder.fp16.onnx"
    t0 = time.perf_counter()
    report = half_convolutions(run.out / "vocoder.onnx", path)
    run.timed(path.name, t0)
    run.check(path, "vocoder_fp16", parts.cases, parts.reference)
    run.progress.done()
    return report


def resamplers(run: ExportRun, source: int, rates: list[int]) -> dict[str, Any]:
    """A polyphase (Kaiser-windowed sinc) resampler graph from the vocoder's ``source`` rate
    to each of ``rates``, checked against torchaudio; returns their manifest entries."""
    entries: dict[str, Any] = {}
    test = _test_signal(source, run.rng)
    for rate in rates:
        module = PolyphaseResampler(source, rate).eval()
        spec = module.spec
        name = f"resample_{source}_{rate}"
        run.progress.step(f"export {name}")
        length = torch.export.Dim("length", min=spec.kernel_size, max=1 << 26)
        channels = torch.export.Dim("channels", min=1, max=16)
        path = export_onnx(
            module,
            [torch.zeros(2, spec.kernel_size + 3 * spec.orig)],
            ["x"],
            ["y"],
            [{0: channels, 1: length}],
            run.out / f"{name}.onnx",
        )
        geo = ResamplerGeometry.from_manifest(spec.to_manifest())

        def reference(x: np.ndarray, rate: int = rate) -> np.ndarray:
            return reference_resample(torch.from_numpy(x), source, rate).numpy()

        def whole(run_graph: Any, geo: ResamplerGeometry = geo) -> Any:
            return lambda x: resample_whole(run_graph, geo, x)

        cases = [("tones_chirp_noise_2ch", [test])]
        run.parity[path.name] = check_parity(
            path.name, "resampler", cases, reference, whole(ort_runner(path))
        )
        run.add(path, "resampler", "onnx", rate)
        run.progress.done()
        if run.want_torchscript:
            ts = export_torchscript(
                module, [torch.zeros(1, spec.kernel_size)], run.out / f"{name}.pt"
            )
            graph = torch.jit.load(str(ts))
            run.parity[ts.name] = check_parity(
                ts.name, "resampler", cases, reference, whole(torch_runner(graph))
            )
            run.add(ts, "resampler", "torchscript", rate)
            run.progress.done()
        entries[str(rate)] = {**spec.to_manifest(), "file": path.name}
    return entries


def _test_signal(rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.5 * rate)) / rate
    tones = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 7000 * t)
    chirp = 0.2 * np.sin(2 * np.pi * (50 * t + 20000 * t**2))
    noise = 0.1 * rng.standard_normal(t.size)
    return np.stack([tones + chirp, noise]).astype(np.float32)


def measure_receptive_field(vocoder: torch.nn.Module, n_mels: int, hop: int) -> int:
    """Mel frames on either side that can change one output sample (exact, by autograd)."""
    frames = 96
    x = torch.zeros(1, n_mels, frames, requires_grad=True)
    y = vocoder(x - 5.0)
    centre = frames // 2
    y[0, 0, centre * hop + hop // 2].backward()
    assert x.grad is not None
    touched = torch.nonzero(x.grad.abs().sum(dim=1)[0] > 0).flatten()
    reach = int(max(centre - touched.min().item(), touched.max().item() - centre))
    if reach >= centre - 1:
        log.warning("vocoder receptive field reaches the probe edge (%d frames)", reach)
    return reach
