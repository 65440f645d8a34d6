"""The int8 vocoder: what export quantizes, its recorded SNR, and serving it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest

from distill_serve.bundle import BundleError, load_bundle
from distill_serve.client import Client
from distill_serve.export.parity import snr_db
from distill_serve.server.engine.engine import Engine, EngineConfig
from tests.conftest import generate, manifest, params, start_server


def test_stand_in_bundle_carries_a_checked_int8_vocoder(stand_in_bundle: Path) -> None:
    m = manifest(stand_in_bundle)
    report = m["vocoder"]["int8"]
    assert report["quantized_convs"] > 0 and report["calibration_inputs"] > 0
    parity = m["parity"]["vocoder.int8.onnx"]
    assert parity["role"] == "vocoder_int8" and parity["passed"]
    # measured ~38 dB on the demo model; a wrong scale or zero point gives < 10 dB
    assert parity["min_snr_db"] >= 30.0
    assert {c["name"] for c in parity["cases"]} == {
        c["name"] for c in m["parity"]["vocoder.onnx"]["cases"]
    }


def test_only_dense_inner_convolutions_are_quantized(stand_in_bundle: Path) -> None:
    graph = onnx.load(str(stand_in_bundle / "vocoder.int8.onnx")).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    grouped = [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    dense = [n for n in convs if n not in grouped]
    assert grouped and not any(n.input[1] in dequantized for n in grouped)
    quantized = [n.input[1] in dequantized for n in dense]
    assert quantized[0] is False and quantized[-1] is False  # mel in, waveform out
    assert all(quantized[1:-1])


@pytest.fixture(scope="module")
def int8_engine(stand_in_bundle: Path) -> Engine:
    return Engine.from_dir(stand_in_bundle, EngineConfig(use_cuda=False, vocoder_precision="int8"))


def test_int8_engine_serves_close_to_fp32(int8_engine: Engine, engine: Engine, report) -> None:  # type: ignore[no-untyped-def]
    assert int8_engine.vocoder_precision == "int8" and engine.vocoder_precision == "fp32"
    p = params(engine, seed=4)
    ref, out = generate(engine, p), generate(int8_engine, p)
    assert out.shape == ref.shape
    snr = snr_db(ref, out)
    report(f"int8 vocoder, 2 s crossfade after post-processing: {snr:.1f} dB SNR vs fp32")
    assert 20.0 <= snr < 90.0  # close, and really a different graph


def test_int8_server_reports_its_precision(int8_engine: Engine) -> None:
    server = start_server(int8_engine)
    try:
        with Client(server.target, timeout=30) as client:
            assert client.info().vocoder_precision == "int8"
            streamed = client.generate_streamed("crossfade", 1.0, seed=1)
        assert streamed.audio.shape[1] == 44100
    finally:
        server.stop()


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_missing_precision_names_the_export_flag(stand_in_bundle: Path, precision: str) -> None:
    bundle = load_bundle(stand_in_bundle)
    role = f"vocoder_{precision}"
    without = dataclasses.replace(bundle, files=tuple(f for f in bundle.files if f.role != role))
    with pytest.raises(BundleError, match=f"export --{precision}"):
        Engine(without, EngineConfig(use_cuda=False, vocoder_precision=precision))


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="vocoder_precision"):
        EngineConfig(vocoder_precision="bf16")
