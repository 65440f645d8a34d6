"""Compressed audio: FLAC files (python-soundfile's libsndfile) and Opus (libopus through
PyAV), shared by the server (encoders) and the clients (decoders).

Opus is used the way RFC 7845 and WebRTC use it: 20 ms frames at one of Opus's own rates
(8, 12, 16, 24, 48 kHz), the encoder delay announced as *pre-skip* (in 48 kHz samples) in
the identification header ``OpusHead``. A stream is the bare packet sequence plus that
header; a file is the same packets in an Ogg container. Encoding is deterministic (same
libopus, settings and input give the same packets), so a streamed reply decodes to exactly
the audio of the unary file with the same request.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import av
import numpy as np
import soundfile as sf
from av.audio.codeccontext import AudioCodecContext

from distill_serve.tags import parse_info_comment

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
OPUS_FRAME_MS = 20
OPUS_BITRATES = (6000, 510000)
DEFAULT_OPUS_BITRATE = 128000
FLAC_BITS = (16, 24)
DEFAULT_FLAC_BITS = 16
_FLAC_SUBTYPE = {16: "PCM_16", 24: "PCM_24"}
_LAYOUT = {1: "mono", 2: "stereo"}


def flac_bytes(
    audio: np.ndarray, rate: int, bits: int, tags: Mapping[str, str] | None = None
) -> bytes:
    """A complete FLAC file of ``(channels, n)`` float audio in [-1, 1], coded by libsndfile;
    ``tags`` become Vorbis comments (the frames copied as they are by FFmpeg's FLAC muxer)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0).T, rate, subtype=_FLAC_SUBTYPE[bits], format="FLAC")
    return _retagged(buf.getvalue(), "flac", tags) if tags else buf.getvalue()


def _retagged(data: bytes, container: str, tags: Mapping[str, str]) -> bytes:
    """``data`` (a one-stream file) with ``tags`` as its metadata, its packets copied."""
    out_buf = io.BytesIO()
    with av.open(io.BytesIO(data), "r") as src, av.open(out_buf, "w", format=container) as out:
        audio = src.streams.audio[0]
        stream = out.add_stream_from_template(audio)
        out.metadata.update(tags)
        for packet in src.demux(audio):
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = stream
            out.mux(packet)
    return out_buf.getvalue()


def file_tags(data: bytes) -> dict[str, str]:
    """The tags of a FLAC or Ogg file (Vorbis comments; keys as written) or of a WAV file
    (its ``LIST/INFO`` comment, :mod:`distill_serve.tags`)."""
    if data[:4] == b"RIFF":
        with sf.SoundFile(io.BytesIO(data)) as f:
            return parse_info_comment(f.comment or "")
    with av.open(io.BytesIO(data)) as src:
        return {**src.metadata, **src.streams.audio[0].metadata}


def read_file(data: bytes) -> tuple[np.ndarray, int]:
    """A WAV, FLAC or Ogg Opus file -> ``(channels, n)`` float32 audio and its rate.

    WAV and FLAC: libsndfile. Ogg Opus: :func:`read_opus_file`, the decoder of streams, so
    a unary Opus reply and the stream of the same request decode to the same samples."""
    if data[:4] == b"OggS" and b"OpusHead" in data[:512]:
        return read_opus_file(data)
    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return np.ascontiguousarray(audio.T), int(rate)


def read_opus_file(data: bytes) -> tuple[np.ndarray, int]:
    """An Ogg Opus file -> audio at the rate it was made from (the ``OpusHead``'s input
    rate, if an Opus rate), exactly as long as its last granule position says."""
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        head = bytes(stream.codec_context.extradata or b"")
        channels = head[9]
        made_at = int(struct.unpack_from("<I", head, 12)[0])
        rate = made_at if made_at in OPUS_RATES else max(OPUS_RATES)
        packets = [p for p in container.demux(stream) if p.size]
    if not packets:
        return np.zeros((channels, 0), np.float32), rate
    # the end: the last granule position, which FFmpeg gives as the last packet's end (in
    # 48 kHz samples after pre-skip); the packets are decoded as a stream's, untrimmed
    last = packets[-1]
    end = last.pts + last.duration if last.pts is not None and last.duration else None
    decoder = OpusDecoder(head, rate, channels)
    audio = np.concatenate([decoder.decode([bytes(p) for p in packets]), decoder.finish()], 1)
    length = decoder.decoded_48k if end is None else min(end, decoder.decoded_48k)
    return audio[:, : round(length * rate / 48000)], rate


@dataclass(frozen=True)
class OpusSettings:
    rate: int
    channels: int
    bitrate_bps: int = DEFAULT_OPUS_BITRATE

    def __post_init__(self) -> None:
        if self.rate not in OPUS_RATES:
            raise ValueError(f"Opus runs at {OPUS_RATES} Hz only, not {self.rate}")
        if self.channels not in _LAYOUT:
            raise ValueError(f"Opus here is mono or stereo, not {self.channels} channels")
        lo, hi = OPUS_BITRATES
        if not lo <= self.bitrate_bps <= hi:
            raise ValueError(f"Opus bitrate must be in [{lo}, {hi}] bit/s")

    @property
    def frame_size(self) -> int:
        """Samples per channel in one 20 ms packet at ``rate``."""
        return self.rate * OPUS_FRAME_MS // 1000


def _open_encoder(codec: AudioCodecContext, s: OpusSettings) -> None:
    codec.sample_rate = s.rate
    codec.layout = _LAYOUT[s.channels]
    codec.format = "flt"
    codec.bit_rate = s.bitrate_bps
    codec.options = {"frame_duration": str(OPUS_FRAME_MS), "application": "audio"}


def _frame(block: np.ndarray, s: OpusSettings, pts: int) -> av.AudioFrame:
    interleaved = np.ascontiguousarray(block.T, dtype=np.float32).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(interleaved, format="flt", layout=_LAYOUT[s.channels])
    frame.sample_rate = s.rate
    frame.pts = pts
    return frame


class OpusEncoder:
    """``(channels, n)`` float blocks of any length -> raw Opus packets of 20 ms each.

    Samples short of a whole frame wait for the next block; :meth:`flush` encodes the last
    (short) frame, which libopus pads with silence, and drains the encoder's delay.
    ``id_header`` is the stream's ``OpusHead``; decoded output starts with ``pre_skip``
    (48 kHz) samples to drop."""

    def __init__(self, settings: OpusSettings) -> None:
        self.settings = settings
        self._codec = cast(AudioCodecContext, av.CodecContext.create("libopus", "w"))
        _open_encoder(self._codec, settings)
        self._codec.open()
        self.id_header = bytes(self._codec.extradata or b"")
        if self.id_header[:8] != b"OpusHead":
            raise RuntimeError("libopus gave no OpusHead identification header")
        self.pre_skip = int(struct.unpack_from("<H", self.id_header, 10)[0])
        self._pending = np.zeros((settings.channels, 0), dtype=np.float32)
        self._pts = 0

    def encode(self, block: np.ndarray) -> list[bytes]:
        """Packets for every whole 20 ms frame buffered so far, in order."""
        pending = np.concatenate([self._pending, block.astype(np.float32)], axis=1)
        n = self.settings.frame_size
        whole = pending.shape[1] // n * n
        packets: list[bytes] = []
        for start in range(0, whole, n):
            packets += self._send(_frame(pending[:, start : start + n], self.settings, self._pts))
            self._pts += n
        self._pending = pending[:, whole:]
        return packets

    def flush(self) -> list[bytes]:
        """The last partial frame (zero-padded) and the encoder's delay; ends the stream."""
        packets: list[bytes] = []
        if self._pending.shape[1]:  # libopus pads a short last frame itself
            packets += self._send(_frame(self._pending, self.settings, self._pts))
            self._pending = self._pending[:, :0]
        return packets + self._send(None)

    def _send(self, frame: av.AudioFrame | None) -> list[bytes]:
        return [bytes(p) for p in self._codec.encode(frame)]


def ogg_opus_bytes(
    audio: np.ndarray, settings: OpusSettings, tags: Mapping[str, str] | None = None
) -> bytes:
    """A complete Ogg Opus file (RFC 7845) of ``(channels, n)`` float audio: the same packets
    :class:`OpusEncoder` gives, muxed by FFmpeg's Ogg muxer, whose last granule position marks
    the exact length; ``tags`` go into its Vorbis comments (``OpusTags``)."""
    buf = io.BytesIO()
    n = settings.frame_size
    with av.open(buf, "w", format="ogg") as out:
        out.metadata.update(tags or {})
        stream = out.add_stream("libopus", rate=settings.rate)
        _open_encoder(stream.codec_context, settings)
        for start in range(0, audio.shape[1], n):
            block = audio[:, start : start + n]  # the last one may be short: libopus pads it
            for packet in stream.encode(_frame(block, settings, start)):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


class OpusDecoder:
    """Raw Opus packets (a stream's ``AudioChunk.packets``) -> ``(channels, n)`` float32 at
    the stream's rate, pre-skip already dropped (FFmpeg's libopus decoder reads it from the
    ``OpusHead`` it is given).

    FFmpeg decodes Opus at 48 kHz only; a stream at a lower rate is resampled to it by
    FFmpeg's resampler, whose delay :meth:`finish` drains. (libopus itself, as the C++
    client uses it, decodes at any Opus rate directly.)"""

    def __init__(self, id_header: bytes, rate: int, channels: int) -> None:
        self._codec = cast(AudioCodecContext, av.CodecContext.create("libopus", "r"))
        self._codec.extradata = id_header
        self._codec.layout = _LAYOUT[channels]
        self._codec.format = "flt"
        self._codec.open()
        self.channels = channels
        self._resampler = (
            av.AudioResampler(format="flt", layout=_LAYOUT[channels], rate=rate)
            if rate != 48000
            else None
        )
        #: 48 kHz samples decoded so far, pre-skip dropped
        self.decoded_48k = 0

    def decode(self, packets: Sequence[bytes | av.Packet]) -> np.ndarray:
        """The audio these packets (the next in the stream) decode to."""
        frames: list[av.AudioFrame] = []
        for packet in packets:
            if isinstance(packet, bytes):
                packet = av.Packet(packet)
            if packet.size:  # a demuxer's empty flush packet would end the decoder
                frames += self._codec.decode(packet)
        self.decoded_48k += sum(f.samples for f in frames)
        return self._convert(frames)

    def finish(self) -> np.ndarray:
        """What the resampler still holds at the end of the stream (empty at 48 kHz)."""
        return self._convert([None])

    def _convert(self, frames: Sequence[av.AudioFrame | None]) -> np.ndarray:
        blocks = [np.zeros((self.channels, 0), dtype=np.float32)]
        for frame in frames:
            if self._resampler is not None:
                out = self._resampler.resample(frame)
            else:
                out = [frame] if frame is not None else []
            blocks += [_planar(f.to_ndarray(), self.channels) for f in out]
        return np.concatenate(blocks, axis=1)


def _planar(samples: np.ndarray, channels: int) -> np.ndarray:
    """PyAV gives packed formats as ``(1, n * channels)``, planar ones as ``(channels, n)``."""
    if samples.shape[0] == channels and channels > 1:
        return samples.astype(np.float32)
    flat = samples.reshape(-1)
    scale = 32768.0 if samples.dtype == np.int16 else 1.0
    return (flat.reshape(-1, channels).T / scale).astype(np.float32)
