"""A reply says how its audio was made (``AudioFormat.tags``), and the files the server and
the client's ``generate`` write carry the same tags: Vorbis comments in FLAC and Ogg, a
``LIST/INFO`` comment in WAV. The settings in them make the same audio again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distill_serve.client import Client
from distill_serve.codecs import file_tags
from tests.conftest import ServerThread

SLIDER = dict(seed=11, sliders={0: 4, 2: -3}, spatial="haas", stereo_width=1.2, stereo_depth=0.3)


def test_every_reply_and_file_says_how_it_was_made(server: ServerThread) -> None:
    with Client(server.target, timeout=60) as c:
        model = c.info()
        plain = c.generate("slider", 1.0, evolution_amount=0.7, **SLIDER)  # type: ignore[arg-type]
        streamed = c.generate_streamed("slider", 1.0, evolution_amount=0.7, **SLIDER)  # type: ignore[arg-type]
        files = {
            encoding: c.generate(
                "slider",
                1.0,
                evolution_amount=0.7,
                encoding=encoding,
                wav=encoding != "flac" and encoding != "opus",
                **SLIDER,  # type: ignore[arg-type]
            )
            for encoding in ("pcm16", "flac", "opus")
        }
    tags = plain.tags
    assert tags["distill_seed"] == "11" and tags["distill_model"]
    assert tags["distill_bundle"] and streamed.tags == tags
    settings = json.loads(tags["distill_settings"])
    assert settings == {
        "mode": "slider",
        "duration_s": 1.0,
        "sample_rate": model.default_sample_rate,
        "chunk_duration_s": settings["chunk_duration_s"],
        "spatial": "haas",
        "stereo_width": 1.2,
        "stereo_depth": 0.3,
        "evolution_amount": 0.7,
        "sliders": {"0": 4, "2": -3},
    }
    for encoding, result in files.items():
        assert result.file[:4] in (b"RIFF", b"fLaC", b"OggS"), encoding
        written = file_tags(result.file)
        assert {k: written[k] for k in tags} == result.tags, encoding
        assert json.loads(written["distill_settings"])["sample_rate"] == result.sample_rate
    opus = json.loads(files["opus"].tags["distill_settings"])
    assert opus == {**settings, "sample_rate": 48000}  # Opus's default rate


@pytest.mark.parametrize("mode", ["crossfade", "latent_interp", "slider"])
def test_the_settings_in_a_file_make_the_same_audio_again(server: ServerThread, mode: str) -> None:
    latent = np.linspace(-1, 1, 64).astype(np.float32) if mode == "slider" else None
    with Client(server.target, timeout=60) as c:
        first = c.generate(mode, 0.8, wav=True, spatial="stereo", stereo_width=0.4, latent=latent)
        tags = file_tags(first.file)
        settings = json.loads(tags["distill_settings"])
        if "sliders" in settings:
            settings["sliders"] = {int(k): v for k, v in settings["sliders"].items()}
        again = c.generate(
            settings.pop("mode"),
            settings.pop("duration_s"),
            wav=True,
            seed=int(tags["distill_seed"]),
            model=tags["distill_model"],
            **settings,
        )
    assert again.tags == first.tags
    assert first.file[:4] == b"RIFF" and again.file == first.file  # the same file, byte for byte


def test_the_clis_wav_carries_the_tags(server: ServerThread, tmp_path: Path) -> None:
    wav = tmp_path / "streamed.wav"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill_serve",
            "generate",
            "--server",
            server.target,
            "--mode",
            "slider",
            "--duration",
            "0.5",
            "--seed",
            "3",
            "--slider",
            "1=2",
            "--stream",
            "-o",
            str(wav),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    tags = file_tags(wav.read_bytes())
    assert tags["distill_seed"] == "3"
    assert json.loads(tags["distill_settings"])["sliders"] == {"1": 2}
