"""The web edge's wire format (docs/api.md, "WebSocket and HTTP"): messages are the gRPC
messages in protobuf's JSON mapping, audio goes in binary frames with a fixed header, and a
refusal is a JSON error plus a close code (WebSocket) or an HTTP status.
"""

from __future__ import annotations

import json
import struct
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from distill_serve.server.pipeline.request import InvalidRequest
from distill_serve.v1 import distill_pb2 as pb

#: The WebSocket subprotocol a live session speaks; a client offers it, and may offer its
#: bearer token beside it as ``bearer.<token>`` (browsers cannot set other headers).
SUBPROTOCOL = "distill.v1"
TOKEN_PROTOCOL_PREFIX = "bearer."

#: An audio frame's header, little-endian: kind (1 = audio), flags, Opus packet count,
#: sequence, frames per channel, control sequence, sample offset, timeline position.
AUDIO_HEADER = struct.Struct("<BBHIIIQQ")
KIND_AUDIO = 1
FLAG_OPUS = 1  # the payload is Opus packets, each a little-endian uint16 length + bytes
FLAG_POSITION = 2  # the block has a timeline position (a timeline session)

#: Largest message a client may send (a control or a start); bigger ones close the socket
#: with 1009 (message too big).
MAX_CLIENT_MESSAGE = 64 * 1024

#: WebSocket close codes: 1000 after a session's end event; 4000 + the gRPC status code
#: when it ends with an error (4003 INVALID_ARGUMENT, 4008 RESOURCE_EXHAUSTED, 4016
#: UNAUTHENTICATED, ...), after a JSON ``error`` message that says why.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server is stopping
CLOSE_STATUS_BASE = 4000

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

M = TypeVar("M", bound=Message)


def parse(text: str | bytes, message: type[M], what: str) -> M:
    """``text`` (JSON) as ``message``; unknown fields and wrong types are refused.

    Raises InvalidRequest naming what is wrong."""
    try:
        return json_format.Parse(text, message())
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise InvalidRequest(what, f"not a JSON {message.DESCRIPTOR.name}: {exc}") from None


def as_dict(message: Message) -> dict[str, Any]:
    """``message`` in protobuf's JSON mapping (lowerCamelCase names, enums by name)."""
    return json_format.MessageToDict(message)


def as_json(message: Message) -> str:
    return json.dumps(as_dict(message), separators=(",", ":"))


def audio_frame(chunk: pb.AudioChunk, timeline: bool) -> bytes:
    """A binary frame for ``chunk``: :data:`AUDIO_HEADER`, then the PCM bytes (interleaved,
    as ``data``) or the Opus packets, each behind its uint16 length."""
    flags = (FLAG_OPUS if chunk.packets else 0) | (FLAG_POSITION if timeline else 0)
    header = AUDIO_HEADER.pack(
        KIND_AUDIO,
        flags,
        len(chunk.packets),
        chunk.sequence & 0xFFFFFFFF,
        chunk.num_samples,
        chunk.control_sequence & 0xFFFFFFFF,
        chunk.sample_offset,
        chunk.position,
    )
    if not chunk.packets:
        return header + chunk.data
    return header + b"".join(struct.pack("<H", len(p)) + p for p in chunk.packets)


def error_json(code: grpc.StatusCode, message: str, retry_after_ms: int | None = None) -> str:
    """The JSON a refusal carries: ``{"error": {"code", "message"[, "retryAfterMs"]}}``."""
    error: dict[str, Any] = {"code": code.name, "message": message}
    if retry_after_ms is not None:
        error["retryAfterMs"] = retry_after_ms
    return json.dumps({"error": error}, separators=(",", ":"))


def close_code(code: grpc.StatusCode) -> int:
    return CLOSE_STATUS_BASE + int(code.value[0])


def close_reason(message: str) -> str:
    """A close frame's reason: at most 123 bytes of UTF-8 (RFC 6455 section 5.5)."""
    data = message.encode()
    if len(data) <= 123:
        return message
    return data[:120].decode(errors="ignore") + "..."
