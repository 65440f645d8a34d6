"""FLAC and Opus through a real server: unary files, Opus streams and live sessions, the
refusals, and the CLI writing .flac/.opus files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from distill_serve.client import Client, DistillError
from distill_serve.codecs import OpusDecoder, read_file
from distill_serve.v1 import distill_pb2 as pb
from distill_serve.v1 import distill_pb2_grpc as pb_grpc
from tests.conftest import ServerThread

SPEC = {"seed": 5, "spatial": "stereo"}


def _band_db(audio: np.ndarray, rate: int = 48000) -> np.ndarray:
    """Energy (dB) of each channel in octave bands from 125 Hz to 16 kHz."""
    spectrum = np.abs(np.fft.rfft(audio, axis=1)) ** 2
    freqs = np.fft.rfftfreq(audio.shape[1], 1 / rate)
    edges = 125.0 * 2.0 ** np.arange(8)
    bands = [spectrum[:, (freqs >= lo) & (freqs < 2 * lo)].sum(axis=1) for lo in edges]
    return 10 * np.log10(np.stack(bands, axis=1) + 1e-12)


@pytest.mark.parametrize("bits", [16, 24])
def test_unary_flac_is_the_float_audio_at_its_bit_depth(server: ServerThread, bits: int) -> None:
    with Client(server.target, timeout=60) as c:
        exact = c.generate("crossfade", 1.3, encoding="float32", sample_rate=48000, **SPEC)
        flac = c.generate(
            "crossfade", 1.3, encoding="flac", bits_per_sample=bits, sample_rate=48000, **SPEC
        )
    assert flac.file[:4] == b"fLaC" and flac.sample_rate == 48000
    assert flac.audio.shape == exact.audio.shape == (2, round(1.3 * 48000))
    assert np.max(np.abs(flac.audio - exact.audio)) <= 1.0 / 2 ** (bits - 1)
    assert len(flac.file) < exact.audio.size * bits // 8


def test_opus_stream_is_the_unary_ogg_file(server: ServerThread) -> None:
    """The stream's packets are the Ogg file's packets: decoded, the same audio; and it is a
    faithful coding of the float audio (the codec's own error only)."""
    spec = pb.GenerationSpec(
        mode=pb.CHUNK_MODE_LATENT_INTERP,
        duration_s=2.05,
        seed=5,
        sample_rate=48000,
        spatial=pb.SPATIAL_MODE_STEREO_MID_SIDE,
        encoding=pb.AUDIO_ENCODING_OPUS,
        bitrate_bps=96000,
    )
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.DistillServiceStub(ch)
        msgs = list(stub.GenerateStream(pb.GenerateStreamRequest(spec=spec), timeout=60))
        unary = stub.Generate(pb.GenerateRequest(spec=spec), timeout=60)
        float_spec = pb.GenerationSpec()
        float_spec.CopyFrom(spec)
        float_spec.encoding = pb.AUDIO_ENCODING_FLOAT32
        float_spec.ClearField("bitrate_bps")
        exact = stub.Generate(pb.GenerateRequest(spec=float_spec), timeout=60)
    header, chunks = msgs[0].header, [m.audio for m in msgs[1:-1]]
    assert msgs[-1].WhichOneof("event") == "end"
    assert unary.format.container == pb.CONTAINER_OGG and unary.audio[:4] == b"OggS"
    f = header.format
    assert (f.encoding, f.sample_rate, f.channels, f.bitrate_bps) == (
        pb.AUDIO_ENCODING_OPUS, 48000, 2, 96000,
    )  # fmt: skip
    assert header.opus.id_header[:8] == b"OpusHead" and header.opus.frame_duration_ms == 20
    assert header.opus.channels == 2 and header.opus.pre_skip > 0
    assert header.model == server.server.models.default_name and header.model_version
    assert all(not c.data for c in chunks)
    assert [c.sample_offset for c in chunks] == list(
        np.cumsum([0] + [c.num_samples for c in chunks[:-1]])
    )
    packets = [p for c in chunks for p in c.packets]
    assert sum(c.num_samples for c in chunks) == len(packets) * 960

    decoder = OpusDecoder(header.opus.id_header, 48000, 2)
    streamed = decoder.decode(packets)[:, : f.total_samples]
    from_file, rate = read_file(unary.audio)
    reference = np.frombuffer(exact.audio, "<f4").reshape(-1, 2).T
    assert rate == 48000 and from_file.shape == streamed.shape == reference.shape
    np.testing.assert_array_equal(streamed, from_file)
    # a perceptual codec keeps each band's energy, not the waveform (the stand-in's random
    # vocoder makes noise, where Opus codes bands by energy): compare octave bands
    # that hold the sound (within 30 dB of the loudest; the codec's noise floor is ~35 dB
    # down, which shows in the stand-in's near-empty low octaves)
    ref_bands, opus_bands = _band_db(reference), _band_db(from_file)
    loud = ref_bands > ref_bands.max() - 30.0
    assert loud.sum() >= 8
    assert np.all(np.abs(opus_bands - ref_bands)[loud] < 1.0)


def test_python_client_decodes_opus_streams_at_every_opus_rate(server: ServerThread) -> None:
    with Client(server.target, timeout=60) as c:
        for rate in (16000, 24000):
            unary = c.generate("crossfade", 1.0, encoding="opus", sample_rate=rate, **SPEC)
            streamed = c.generate_streamed(
                "crossfade", 1.0, encoding="opus", sample_rate=rate, **SPEC
            )
            assert unary.audio.shape == streamed.audio.shape == (2, rate)
            np.testing.assert_array_equal(unary.audio, streamed.audio)
        default = c.generate_streamed("crossfade", 0.5, encoding="opus")
        assert default.sample_rate == 48000  # the model's 44.1 kHz is no Opus rate


def test_live_opus_session_is_the_stream_until_its_fade(server: ServerThread) -> None:
    """With no controls a live session plays a fixed-length request's audio, so its first
    packets are that stream's; a stop ends it with one last (fade-out) chunk that carries
    the encoder's end."""
    options = {"seed": 8, "encoding": "opus", "sample_rate": 24000, "bitrate_bps": 64000}
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.DistillServiceStub(ch)
        from distill_serve.client.client import build_spec

        spec = build_spec("crossfade", 3.0, **options)
        stream = list(stub.GenerateStream(pb.GenerateStreamRequest(spec=spec), timeout=60))
    stream_packets = [p for m in stream[1:-1] for p in m.audio.packets]

    with Client(server.target, timeout=60) as c:
        session = c.live("crossfade", lookahead=0.2, **options)
        blocks = []
        for block in session:
            blocks.append(block)
            if len(blocks) == 6:
                session.stop()
    assert session.end_reason == "stop"
    live_audio = np.concatenate([b.audio for b in blocks], axis=1)
    decoder = OpusDecoder(stream[0].header.opus.id_header, 24000, 1)
    streamed = decoder.decode(stream_packets)
    n = min(live_audio.shape[1], streamed.shape[1]) // 2  # well before the fade-out
    assert n > 4800
    np.testing.assert_allclose(live_audio[:, :n], streamed[:, :n], atol=1e-6)
    assert blocks[-1].control_sequence > blocks[-2].control_sequence  # the stop's fade


@pytest.mark.parametrize(
    ("options", "container", "field"),
    [
        ({"encoding": "opus", "sample_rate": 44100}, pb.CONTAINER_UNSPECIFIED, "sample_rate"),
        ({"encoding": "opus", "bitrate_bps": 600000}, pb.CONTAINER_UNSPECIFIED, "bitrate_bps"),
        ({"encoding": "opus"}, pb.CONTAINER_WAV, "container"),
        ({"encoding": "flac", "bits_per_sample": 8}, pb.CONTAINER_UNSPECIFIED, "bits_per_sample"),
        ({"encoding": "flac"}, pb.CONTAINER_OGG, "container"),
        ({"encoding": "pcm16"}, pb.CONTAINER_FLAC, "container"),
        ({"encoding": "pcm16", "bitrate_bps": 64000}, pb.CONTAINER_RAW, "bitrate_bps"),
        ({"encoding": "opus", "bits_per_sample": 16}, pb.CONTAINER_UNSPECIFIED, "bits_per_sample"),
    ],
)
def test_codec_settings_that_cannot_work_are_refused(
    server: ServerThread, options: dict[str, object], container: int, field: str
) -> None:
    from distill_serve.client.client import build_spec

    request = pb.GenerateRequest(
        spec=build_spec("crossfade", 1.0, **options),
        container=container,
    )
    with grpc.insecure_channel(server.target) as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.DistillServiceStub(ch).Generate(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")


def test_flac_is_refused_for_streams_with_what_to_use(server: ServerThread) -> None:
    with Client(server.target, timeout=60) as c:
        with pytest.raises(DistillError) as err:
            c.generate_streamed("crossfade", 1.0, encoding="flac")
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "OPUS" in err.value.details
        info = c.info()
    assert {"flac", "opus"} <= set(info.encodings)


def test_cli_writes_flac_and_opus_files(server: ServerThread, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "distill_serve", "generate", "--server", server.target]
    common = ["--mode", "crossfade", "--duration", "1.5", "--seed", "3", "--rate", "48000"]
    for encoding, name, magic in (("flac", "x.flac", b"fLaC"), ("opus", "x.opus", b"OggS")):
        out = tmp_path / name
        run = subprocess.run(
            [*cli, *common, "--encoding", encoding, "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        assert out.read_bytes()[:4] == magic
        audio, rate = read_file(out.read_bytes())
        assert (rate, audio.shape[1]) == (48000, 72000)
    wrong = subprocess.run(
        [*cli, *common, "--encoding", "opus", "-o", str(tmp_path / "x.wav")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wrong.returncode == 1 and "*.opus" in wrong.stderr
