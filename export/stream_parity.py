"""The streaming vocoder graph's parity check: fed step by step, against the whole-clip
vocoder (its ONNX graph and the torch module), with its head and tail edges measured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distill_serve.export.parity import ParityResult, check_parity, snr_db
from distill_serve.export.runners import memoised, ort_runner, ort_session
from distill_serve.export.streaming import PARITY_STEPS, StreamLayout, run_stream


def stream_parity(
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
    session = ort_session(path, mem_reuse=False)
    offline = memoised(ort_runner(whole_graph))  # one run per mel, whatever the step
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
    streamed_once = memoised(streamed)  # one run per case: compared twice, and its edges
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
