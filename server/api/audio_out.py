"""Generated audio -> the bytes a reply carries, in the request's encoding.

A whole reply is one file or one run of raw samples (:func:`whole`); a stream or live
session is coded block by block (:func:`chunk_coder`): PCM blocks stand alone, Opus keeps an
encoder per stream whose packets span blocks (20 ms frames; a block's left-over samples go
into the next packet). Coding runs off the event loop (:func:`code`). gRPC types stay in
``convert.py``.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field, replace

import numpy as np

from distill_serve.audio import Encoding, encode, wav_bytes
from distill_serve.codecs import (
    OPUS_FRAME_MS,
    OpusEncoder,
    OpusSettings,
    flac_bytes,
    ogg_opus_bytes,
)
from distill_serve.server.pipeline.request import GenerationParams


class Container(enum.Enum):
    RAW = "raw"
    WAV = "wav"
    FLAC = "flac"
    OGG = "ogg"


#: The one container each codec comes in (PCM comes raw or in WAV).
CODEC_CONTAINER = {Encoding.FLAC: Container.FLAC, Encoding.OPUS: Container.OGG}


def container_for(encoding: Encoding, asked: Container | None) -> Container:
    """The container a whole reply uses; ``asked`` None: the encoding's own.

    Raises ValueError with what to ask for instead."""
    own = CODEC_CONTAINER.get(encoding)
    if own is not None:
        if asked not in (None, own):
            raise ValueError(
                f"{encoding.value} comes in {own.name} only, not {asked.name if asked else ''}; "
                f"ask for {own.name} or leave the container unset"
            )
        return own
    if asked in (Container.FLAC, Container.OGG):
        raise ValueError(
            f"{asked.name} holds {'FLAC' if asked is Container.FLAC else 'OPUS'} audio, not "
            f"{encoding.value}; ask for RAW or WAV, or that encoding"
        )
    return asked or Container.RAW


def opus_settings(p: GenerationParams) -> OpusSettings:
    return OpusSettings(p.sample_rate, p.channels, p.bitrate_bps)


def whole(
    audio: np.ndarray, p: GenerationParams, container: Container, tags: dict[str, str]
) -> bytes:
    """A unary reply's bytes: ``(channels, n)`` audio in ``container`` (from
    :func:`container_for`); a file carries ``tags``."""
    if p.encoding is Encoding.FLAC:
        return flac_bytes(audio, p.sample_rate, p.bits_per_sample, tags)
    if p.encoding is Encoding.OPUS:
        return ogg_opus_bytes(audio, opus_settings(p), tags)
    if container is Container.WAV:
        return wav_bytes(audio, p.sample_rate, p.encoding, tags)
    return encode(audio, p.encoding)


@dataclass(frozen=True)
class Coded:
    """One stream chunk: raw bytes or whole codec packets, and the frames per channel they
    decode to."""

    frames: int
    data: bytes = b""
    packets: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class OpusStreamHeader:
    id_header: bytes
    pre_skip: int
    channels: int
    frame_duration_ms: int = OPUS_FRAME_MS


class PcmChunks:
    """Each block as its own interleaved samples."""

    opus: OpusStreamHeader | None = None

    def __init__(self, encoding: Encoding) -> None:
        self._encoding = encoding

    def encode(self, block: np.ndarray) -> Coded:
        return Coded(frames=block.shape[1], data=encode(block, self._encoding))

    def finish(self) -> Coded | None:
        return None


class OpusChunks:
    """Blocks -> the whole Opus packets ready so far; :meth:`finish` ends the stream."""

    def __init__(self, settings: OpusSettings) -> None:
        self._encoder = OpusEncoder(settings)
        self._frame = settings.frame_size
        self.opus = OpusStreamHeader(
            self._encoder.id_header, self._encoder.pre_skip, settings.channels
        )

    def encode(self, block: np.ndarray) -> Coded:
        return self._coded(self._encoder.encode(block))

    def finish(self) -> Coded | None:
        return self._coded(self._encoder.flush())

    def _coded(self, packets: list[bytes]) -> Coded:
        return Coded(frames=len(packets) * self._frame, packets=packets)


def chunk_coder(p: GenerationParams) -> PcmChunks | OpusChunks:
    """The coder of one stream or live session (FLAC is refused for streams earlier)."""
    if p.encoding is Encoding.OPUS:
        return OpusChunks(opus_settings(p))
    if not p.encoding.is_pcm:
        raise ValueError(f"{p.encoding.value} cannot be streamed; use OPUS or PCM")
    return PcmChunks(p.encoding)


async def code(coder: PcmChunks | OpusChunks, block: np.ndarray) -> Coded:
    """Code one block off the event loop: Opus costs ~50 ms of CPU per stereo audio
    second, too much for the loop that paces live sessions."""
    return await asyncio.to_thread(coder.encode, block)


async def code_last(coder: PcmChunks | OpusChunks, block: np.ndarray) -> Coded:
    """Code a stream's last block with the codec's end (Opus: its delay, padded frame)."""

    def last() -> Coded:
        coded, end = coder.encode(block), coder.finish()
        if end is None:
            return coded
        return replace(coded, frames=coded.frames + end.frames, packets=coded.packets + end.packets)

    return await asyncio.to_thread(last)


async def code_end(coder: PcmChunks | OpusChunks) -> Coded | None:
    """The stream's last chunk (Opus: the last frame and the encoder's delay), if any."""
    return await asyncio.to_thread(coder.finish)
