"""FLAC and Opus coding without a server (distill_serve.codecs): round trips, packet
determinism, and a stream's packets against the Ogg file of the same audio."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
import soundfile as sf

from distill_serve.audio import Encoding, wav_bytes
from distill_serve.codecs import (
    OPUS_RATES,
    OpusDecoder,
    OpusEncoder,
    OpusSettings,
    file_tags,
    flac_bytes,
    ogg_opus_bytes,
    read_file,
)


def _audio(rate: int, frames: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A chord with a little noise: music-like enough for a codec, not silence."""
    t = np.arange(frames) / rate
    rng = np.random.default_rng(seed)
    tone = sum(0.15 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6, 1000.0))
    out = np.stack([tone * (1.0 - 0.3 * c) for c in range(channels)])
    return (out + 0.01 * rng.standard_normal(out.shape)).astype(np.float32)


def _snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - other) ** 2)))


def _ogg_packets(data: bytes) -> list[bytes]:
    with av.open(io.BytesIO(data), "r") as container:
        return [bytes(p) for p in container.demux(audio=0) if p.size]


@pytest.mark.parametrize("bits", [16, 24])
def test_flac_round_trip_is_lossless_at_its_bit_depth(bits: int) -> None:
    audio = _audio(48000, 12345)
    data = flac_bytes(audio, 48000, bits)
    assert data[:4] == b"fLaC"
    decoded, rate = read_file(data)
    assert rate == 48000 and decoded.shape == audio.shape
    step = 1.0 / 2 ** (bits - 1)
    assert np.max(np.abs(decoded - audio)) <= step  # quantisation only
    assert len(data) < audio.size * bits // 8  # and it compressed


@pytest.mark.parametrize("rate", [48000, 24000, 16000])
def test_opus_stream_packets_are_the_ogg_files_packets(rate: int) -> None:
    """Blocks of any size give the same packets as the whole clip in one go, and as the
    Ogg file of the same audio; decoded, stream and file agree far below the codec's
    own error."""
    frames = rate + 123  # not a whole number of 20 ms frames
    audio = _audio(rate, frames)
    settings = OpusSettings(rate, 2, 96000)
    encoder = OpusEncoder(settings)
    packets: list[bytes] = []
    offset = 0
    for size in (1, 700, 4096, 31, 20000, 50000):  # uneven blocks, the last one runs out
        packets += encoder.encode(audio[:, offset : offset + size])
        offset += size
    packets += encoder.flush()
    whole = OpusEncoder(settings)
    assert whole.encode(audio) + whole.flush() == packets
    file = ogg_opus_bytes(audio, settings)
    assert _ogg_packets(file) == packets
    delay = encoder.pre_skip * rate // 48000  # the encoder's lookahead, in output samples
    assert len(packets) == -(-(frames + delay) // settings.frame_size)

    from_file, file_rate = read_file(file)
    assert file_rate == rate and from_file.shape == audio.shape  # exact length kept
    decoder = OpusDecoder(encoder.id_header, rate, 2)
    streamed = np.concatenate([decoder.decode(packets), decoder.finish()], axis=1)
    assert streamed.shape[1] >= frames
    np.testing.assert_array_equal(streamed[:, :frames], from_file)  # the file is the stream
    codec_error = _snr_db(audio, from_file)
    assert codec_error > 20.0  # a working codec at 96 kbit/s
    # and another decoder reads the file: libsndfile, which has libopus decode at the rate
    # itself where FFmpeg decodes at 48 kHz and resamples; they differ well inside the
    # codec's own error (~42 against ~32 dB below 48 kHz, float rounding at 48 kHz)
    other, other_rate = sf.read(io.BytesIO(file), dtype="float32", always_2d=True)
    assert other_rate == rate and other.shape == (frames, 2)
    margin = 30.0 if rate == 48000 else 5.0
    assert _snr_db(other.T, from_file) > codec_error + margin


def test_opus_header_and_settings() -> None:
    encoder = OpusEncoder(OpusSettings(48000, 1, 64000))
    magic, version, channels, pre_skip, input_rate = struct.unpack_from(
        "<8sBBHI", encoder.id_header
    )
    assert (magic, version, channels) == (b"OpusHead", 1, 1)
    assert pre_skip == encoder.pre_skip > 0 and input_rate == 48000
    assert encoder.encode(np.zeros((1, 959), np.float32)) == []  # short of one frame
    assert len(encoder.encode(np.zeros((1, 1), np.float32))) == 1
    for rate in OPUS_RATES:
        assert OpusSettings(rate, 2).frame_size == rate // 50
    with pytest.raises(ValueError, match="Opus runs at"):
        OpusSettings(44100, 2)
    with pytest.raises(ValueError, match="bitrate"):
        OpusSettings(48000, 2, 5999)
    with pytest.raises(ValueError, match="mono or stereo"):
        OpusSettings(48000, 3)


def test_opus_bitrate_buys_quality() -> None:
    audio = _audio(48000, 48000)
    sizes, snrs = [], []
    for bitrate in (32000, 64000, 128000):
        file = ogg_opus_bytes(audio, OpusSettings(48000, 2, bitrate))
        decoded, _ = read_file(file)
        sizes.append(len(file))
        snrs.append(_snr_db(audio, decoded))
    assert sizes == sorted(sizes) and snrs == sorted(snrs)
    assert sizes[-1] < 128000 / 8 * 1.2  # about the asked bitrate, container included


TAGS = {"distill_seed": "7", "distill_model": "rain", "distill_settings": '{"mode":"slider"}'}


@pytest.mark.parametrize("kind", ["flac", "ogg", "wav"])
def test_files_carry_their_tags_and_the_same_audio(kind: str) -> None:
    audio = _audio(48000, 4800)
    make = {
        "flac": lambda tags: flac_bytes(audio, 48000, 24, tags),
        "ogg": lambda tags: ogg_opus_bytes(audio, OpusSettings(48000, 2, 96000), tags),
        "wav": lambda tags: wav_bytes(audio, 48000, Encoding.PCM24, tags),
    }[kind]
    tagged, plain = make(TAGS), make(None)
    got = file_tags(tagged)
    assert {k: got[k] for k in TAGS} == TAGS
    assert "distill_seed" not in file_tags(plain)
    np.testing.assert_array_equal(read_file(tagged)[0], read_file(plain)[0])  # only tags added
    if kind == "wav":  # a LIST/INFO chunk whose comment other tools show as is
        assert b"LIST" in tagged and b"INFOICMT" in tagged
        with sf.SoundFile(io.BytesIO(tagged)) as f:
            assert "distill_seed=7\n" in f.comment and f.software.startswith("distill-serve")
    else:  # Vorbis comments, as metaflac / opusinfo list them
        assert b"distill_seed=7" in tagged
