"""The fp16 vocoder for GPUs: convolutions in fp16, the activations in fp32, its recorded SNR,
and serving it (here on the CPU provider, which has fp16 convolution kernels)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from distill_serve.export.parity import snr_db
from distill_serve.server.engine.engine import Engine, EngineConfig
from tests.conftest import generate, manifest, params


def test_stand_in_bundle_carries_a_checked_fp16_vocoder(stand_in_bundle: Path) -> None:
    m = manifest(stand_in_bundle)
    assert m["vocoder"]["fp16"]["fp16_convolutions"] > 0
    assert m["vocoder"]["fp16"]["fp32_convolutions"] == 0
    parity = m["parity"]["vocoder.fp16.onnx"]
    assert parity["role"] == "vocoder_fp16" and parity["passed"]
    assert parity["min_snr_db"] >= 45.0  # measured ~54 dB on the demo model


def test_only_convolutions_are_fp16(stand_in_bundle: Path) -> None:
    graph = onnx.load(str(stand_in_bundle / "vocoder.fp16.onnx")).graph
    halves = {i.name for i in graph.initializer if i.data_type == TensorProto.FLOAT16}
    conv_ops = ("Conv", "ConvTranspose")
    convs = [n for n in graph.node if n.op_type in conv_ops]
    assert convs and all(set(n.input[1:]) <= halves for n in convs)
    used_by_others = {
        i for n in graph.node if n.op_type not in (*conv_ops, "Cast") for i in n.input
    }
    assert not used_by_others & halves  # Snake/SnakeBeta and the rest read fp32 only
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_fp16_engine_serves_close_to_fp32(stand_in_bundle: Path, engine: Engine, report) -> None:  # type: ignore[no-untyped-def]
    fp16 = Engine.from_dir(stand_in_bundle, EngineConfig(use_cuda=False, vocoder_precision="fp16"))
    p = params(engine, seed=4)
    ref, out = generate(engine, p), generate(fp16, p)
    snr = snr_db(ref, out)
    report(f"fp16 vocoder, 2 s crossfade after post-processing: {snr:.1f} dB SNR vs fp32")
    assert out.shape == ref.shape and 40.0 <= snr < 90.0
