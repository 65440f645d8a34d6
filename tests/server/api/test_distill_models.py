"""A model as the Distill app writes it (a ``.distillgan`` with its own per-model HiFi-GAN V2),
exported and served: its info says what it is and which vocoder runs and why, unary equals
stream bit for bit, the stream path equals the block path, and a live session with no
controls plays the fixed-length request's audio."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from distill_serve.client import Client
from distill_serve.export.app_files import (
    SMALL_V2,
    app_model_dict,
    app_vocoder_state,
    write_app_model,
)
from distill_serve.export.exporter import ExportConfig, export_bundle
from distill_serve.export.parity import snr_db
from distill_serve.server.engine.engine import Engine, EngineConfig
from distill_serve.server.pipeline.generate import audio_blocks
from distill_serve.server.pipeline.live import LiveSession
from distill_serve.server.pipeline.mel import pass_through_bridge
from distill_serve.server.pipeline.request import ChunkMode
from tests.conftest import ServerThread, generate, params, start_server


@pytest.fixture(scope="module")
def app_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("distill-app")
    model = write_app_model(
        work / "rain.distillgan",
        app_model_dict(vocoder_state=app_vocoder_state(SMALL_V2, epochs=50)),
    )
    out = work / "rain"
    export_bundle(
        ExportConfig(
            checkpoint=model, vocoder="auto", out=out, rates=(44100, 48000), progress=False
        )
    )
    return out


@pytest.fixture(scope="module")
def app_engine(app_bundle: Path) -> Engine:
    return Engine.from_dir(app_bundle, EngineConfig(use_cuda=False, live_capacity=0))


@pytest.fixture(scope="module")
def app_server(app_engine: Engine) -> Iterator[ServerThread]:
    s = start_server(app_engine, max_concurrent=4)
    yield s
    s.stop()


def test_info_says_what_the_model_is_and_which_vocoder_runs(app_server: ServerThread) -> None:
    with Client(app_server.target, timeout=60) as c:
        info = c.info()
    assert info.card["name"] == "Rain on Tin" and info.card["file_format"] == ".distillgan"
    assert info.card["training_epochs"] == 200 and info.card["dataset_file_count"] == 23
    assert "tin roof" in info.card["description"]
    assert info.vocoder == "hifigan" and "own vocoder" in info.vocoder_choice
    assert info.default_sample_rate == 44100 and info.vocoder_path == "stream"  # vocoder: 48k
    assert len(info.sliders) == 8


def test_the_info_command_prints_it(app_server: ServerThread) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "distill_serve", "info", "--server", app_server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "distill model: Rain on Tin from .distillgan, 200 training epochs" in out.stdout
    assert "vocoder: hifigan (the model file's own vocoder (chosen automatically))" in out.stdout


@pytest.mark.parametrize("rate", [48000, 44100])
def test_unary_equals_stream_bit_for_bit(app_server: ServerThread, rate: int) -> None:
    with Client(app_server.target, timeout=60) as c:
        unary = c.generate("slider", 2.0, seed=5, sample_rate=rate, sliders={0: 3})
        streamed = c.generate_streamed("slider", 2.0, seed=5, sample_rate=rate, sliders={0: 3})
    assert unary.audio.shape == (1, 2 * rate)
    np.testing.assert_array_equal(unary.audio, streamed.audio)
    assert float(np.abs(unary.audio).max()) > 0.1


def test_the_apps_stereo_unary_equals_stream(app_server: ServerThread) -> None:
    kw = dict(seed=5, sliders={0: 3}, spatial="haas", stereo_width=0.9, stereo_depth=0.4)
    with Client(app_server.target, timeout=60) as c:
        unary = c.generate("slider", 1.5, **kw)  # type: ignore[arg-type]
        streamed = c.generate_streamed("slider", 1.5, **kw)  # type: ignore[arg-type]
    assert unary.audio.shape == (2, round(1.5 * 44100))
    np.testing.assert_array_equal(unary.audio, streamed.audio)
    assert not np.array_equal(unary.audio[0], unary.audio[1])


def test_a_request_that_names_no_rate_gets_44_1_khz(app_server: ServerThread) -> None:
    with Client(app_server.target, timeout=60) as c:
        plain = c.generate("slider", 1.0, seed=5)
        listed = c.list_models()[0]
    assert (plain.sample_rate, plain.audio.shape) == (44100, (1, 44100))
    assert listed.default_sample_rate == 44100


def test_without_44_1_khz_the_default_is_the_vocoders_own_rate(app_engine: Engine) -> None:
    only_native = dataclasses.replace(app_engine.model, sample_rates=(48000, 96000))
    assert only_native.default_sample_rate == 48000
    assert app_engine.model.default_sample_rate == 44100


def test_the_stream_path_equals_the_block_path(app_bundle: Path, app_engine: Engine) -> None:
    block = Engine.from_dir(app_bundle, EngineConfig(use_cuda=False, vocoder_path="block"))
    p = params(app_engine, ChunkMode.CROSSFADE, duration_s=2.5, sample_rate=44100)
    assert snr_db(generate(block, p), generate(app_engine, p)) >= 100.0


def test_a_live_session_without_controls_plays_the_fixed_length_audio(app_engine: Engine) -> None:
    p = params(app_engine, ChunkMode.SLIDER, duration_s=3.0, sample_rate=48000)
    fixed = generate(app_engine, p)
    session = LiveSession(app_engine.runner(), app_engine.model, p, 0.3)
    blocks = []
    while sum(b.shape[1] for b in blocks) < 2 * 48000:
        blocks.append(session.next_block().audio)
    live = np.concatenate(blocks, axis=1)[:, : 2 * 48000]
    assert snr_db(fixed[:, : 2 * 48000], live) >= 100.0


def test_the_pass_through_bridge_runs_in_numpy_with_the_graphs_bits(app_engine: Engine) -> None:
    """A per-model vocoder's bridge is interpolation on the decoder's grid: numpy gives the
    bridge graph's float32 result bit for bit (whole and fractional positions), and the
    served audio is the same whichever runs."""
    assert app_engine.model.bridge_pass_through
    rng = np.random.default_rng(4)
    mel = rng.uniform(0.0, 8.0, (app_engine.model.n_mels_voc, 40)).astype(np.float32)
    for positions in (np.arange(3, 35, dtype=np.float32), rng.uniform(0, 39, 50)):
        at = np.sort(positions).astype(np.float32)
        graph = app_engine.runner().bridge(mel[None], at)[0]
        np.testing.assert_array_equal(pass_through_bridge(mel, at), graph)
    p = params(app_engine, ChunkMode.SLIDER, duration_s=2.0, sample_rate=48000)
    by_graph = dataclasses.replace(app_engine.model, bridge_pass_through=False)
    runner = app_engine.runner()
    with_graph = np.concatenate(list(audio_blocks(runner, by_graph, p)), axis=1)
    np.testing.assert_array_equal(generate(app_engine, p), with_graph)
