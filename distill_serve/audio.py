"""Audio sample formats shared by server and client: float blocks <-> interleaved
little-endian bytes, and WAV files (soundfile). The compressed encodings (FLAC, Opus) are
coded in :mod:`distill_serve.codecs`."""

from __future__ import annotations

import enum
import io
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from distill_serve.tags import SOFTWARE, info_comment


class Encoding(enum.Enum):
    PCM16 = "pcm16"
    PCM24 = "pcm24"
    FLOAT32 = "float32"
    FLAC = "flac"
    OPUS = "opus"

    @property
    def is_pcm(self) -> bool:
        """Raw sample bytes (:func:`encode`), as opposed to a codec's."""
        return self in WAV_SUBTYPE


WAV_SUBTYPE = {Encoding.PCM16: "PCM_16", Encoding.PCM24: "PCM_24", Encoding.FLOAT32: "FLOAT"}


def encode(block: np.ndarray, encoding: Encoding) -> bytes:
    """``(channels, n)`` float block in [-1, 1] -> interleaved bytes (PCM encodings)."""
    if not encoding.is_pcm:
        raise ValueError(f"{encoding.value} is a codec, not a sample format: see codecs")
    frames = np.ascontiguousarray(block.T)  # (n, channels): interleaved
    if encoding is Encoding.FLOAT32:
        return frames.astype("<f4").tobytes()
    clipped = np.clip(frames, -1.0, 1.0)
    if encoding is Encoding.PCM16:
        return np.round(clipped * 32767.0).astype("<i2").tobytes()
    ints = np.round(clipped * 8388607.0).astype("<i4")
    return ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


def decode(data: bytes, encoding: Encoding, channels: int) -> np.ndarray:
    """Interleaved bytes -> ``(channels, n)`` float32 (the inverse of :func:`encode`)."""
    if encoding is Encoding.FLOAT32:
        flat = np.frombuffer(data, dtype="<f4")
    elif encoding is Encoding.PCM16:
        flat = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
    else:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        padded = np.zeros((raw.shape[0], 4), dtype=np.uint8)
        padded[:, 1:] = raw  # little endian: shift into the top three bytes keeps the sign
        flat = (padded.view("<i4")[:, 0] >> 8).astype(np.float32) / 8388607.0
    return flat.reshape(-1, channels).T.astype(np.float32)


def wav_bytes(
    audio: np.ndarray, rate: int, encoding: Encoding, tags: Mapping[str, str] | None = None
) -> bytes:
    """A complete WAV file of ``(channels, n)`` audio, with ``tags`` in a ``LIST/INFO`` chunk
    (:mod:`distill_serve.tags`)."""
    buf = io.BytesIO()
    write_wav(buf, audio, rate, WAV_SUBTYPE[encoding], tags)
    return buf.getvalue()


def write_wav(
    target: str | Path | BinaryIO,
    audio: np.ndarray,
    rate: int,
    subtype: str,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Write ``(channels, n)`` audio as a WAV file (libsndfile ``subtype``: PCM_16, PCM_24,
    FLOAT); ``tags`` go into its ``LIST/INFO`` chunk: the comment holds them, one
    ``key=value`` per line, and the software names the server."""
    channels = audio.shape[0]
    with sf.SoundFile(target, "w", rate, channels, subtype, format="WAV") as f:
        if tags:
            f.comment = info_comment(tags)
            f.software = SOFTWARE
        f.write(audio.T)
