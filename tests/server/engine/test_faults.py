"""Faults: CUDA OOM fallback under load, bundle reload with streams in flight, refused
reloads."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from distill_serve.bundle import (
    BundleError,
    load_bundle,
    sha256_file,
    write_manifest,
)
from distill_serve.client import Client
from distill_serve.export.decoder import DistillDecoder
from distill_serve.export.graphs import export_onnx
from distill_serve.server.api.server import ServerConfig
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.pipeline.request import Limits
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc
from tests.conftest import ServerThread


def test_oom_fallback_under_load_loses_nothing(stand_in_bundle: Path) -> None:
    """The block path on the device (the stream path's batches: test_device_steps.py)."""
    config = EngineConfig(use_cuda=False, fault_injection=True, vocoder_path="block")
    eng = Engine.from_dir(stand_in_bundle, config)
    s = ServerThread(ServerConfig(port=0, limits=Limits(max_concurrent=8)), eng)
    try:
        with Client(s.target, timeout=120) as c:
            reference = {i: c.generate("crossfade", 1.5, seed=i).audio for i in range(6)}
        eng.inject_oom(4)
        results: dict[int, object] = {}

        def work(i: int) -> None:
            with Client(s.target, timeout=120) as c:
                results[i] = c.generate_streamed("crossfade", 1.5, seed=i)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 6  # every request answered
        for i, r in results.items():
            np.testing.assert_array_equal(r.audio, reference[i])  # type: ignore[attr-defined]
        fell_back = sum(r.stats.cpu_fallbacks for r in results.values())  # type: ignore[attr-defined]
        assert fell_back == 4
        assert (
            sum(
                s.metric("distill_cuda_fallbacks_total", {"graph": g})
                for g in ("decoder", "bridge", "vocoder")
            )
            == 4
        )
        with Client(s.target, timeout=60) as c:  # the primary path is back
            after = c.generate("crossfade", 0.5, seed=1)
        assert after.stats is not None and after.stats.cpu_fallbacks == 0
        assert after.stats.execution_provider == eng.primary_provider
    finally:
        s.stop()


def other_model(bundle: Path, out: Path, seed: int) -> Path:
    """A copy of ``bundle`` whose decoder has other weights, with a consistent manifest."""
    shutil.copytree(bundle, out)
    torch.manual_seed(seed)
    decoder = DistillDecoder(64, 8, 6, 128, 94).eval()
    with torch.no_grad():
        decoder.fc.weight.mul_(8.0)
    export_onnx(
        decoder,
        [torch.zeros(2, 64)],
        ["z"],
        ["mel"],
        [{0: torch.export.Dim("batch", min=1, max=4096)}],
        out / "decoder.onnx",
    )
    m = json.loads((out / "manifest.json").read_text())
    for f in m["files"]:
        if f["path"] == "decoder.onnx":
            f["sha256"] = sha256_file(out / "decoder.onnx")
    m["files"] = [f for f in m["files"] if f["format"] == "onnx"]
    for f in list((out).glob("*.pt")):
        f.unlink()
    write_manifest(out, m)
    load_bundle(out)
    return out


def test_reload_swaps_models_without_dropping_streams(
    stand_in_bundle: Path, tmp_path: Path
) -> None:
    second = other_model(stand_in_bundle, tmp_path / "b2", seed=99)
    cpu = EngineConfig(use_cuda=False)
    s = ServerThread(ServerConfig(port=0, engine=cpu), Engine.from_dir(stand_in_bundle, cpu))
    try:
        # A stream held in flight by flow control (a small receive window, no BDP growth, a
        # clip of 2.3 MB): the server cannot finish it before the client reads on.
        spec = pb.GenerationSpec(
            mode=pb.CHUNK_MODE_CROSSFADE, duration_s=6.0, seed=3, sample_rate=96000,
            encoding=pb.AUDIO_ENCODING_FLOAT32,
        )  # fmt: skip
        held = [("grpc.http2.lookahead_bytes", 16384), ("grpc.http2.bdp_probe", 0)]
        with Client(s.target, timeout=120) as c, grpc.insecure_channel(s.target, held) as ch:
            stub = pb_grpc.DistillServiceStub(ch)
            reference = stub.Generate(pb.GenerateRequest(spec=spec), timeout=120).audio
            old_info = c.info()
            stream = stub.GenerateStream(pb.GenerateStreamRequest(spec=spec), timeout=120)
            assert next(stream).WhichOneof("event") == "header"
            collected = [next(stream).audio.data]
            old = s.server.engine
            s.call(s.server.reload(second))  # swap while the stream is in flight
            assert not old.closed, "the stream in flight still runs on the old engine"
            collected += [m.audio.data for m in stream if m.WhichOneof("event") == "audio"]
            assert b"".join(collected) == reference  # the old model's audio, byte for byte
            deadline = time.monotonic() + 10
            while not old.closed and time.monotonic() < deadline:
                time.sleep(0.05)
            assert old.closed, "the swapped-out engine is closed once its last stream ends"
            assert not s.server.engine.closed
            new_info = c.info()
            assert (
                dict((p, h) for p, _, h in new_info.files)["decoder.onnx"]
                != dict((p, h) for p, _, h in old_info.files)["decoder.onnx"]
            )
            swapped = c.generate("crossfade", 6.0, seed=3).audio
            assert not np.array_equal(swapped, reference)
            # A tampered bundle is refused and the current one keeps serving.
            bad = tmp_path / "bad"
            shutil.copytree(second, bad)
            (bad / "vocoder.onnx").write_bytes(b"not a model")
            with pytest.raises(BundleError, match=r"vocoder\.onnx"):
                s.call(s.server.reload(bad))
            np.testing.assert_array_equal(c.generate("crossfade", 6.0, seed=3).audio, swapped)
    finally:
        s.stop()
