"""Python client, CLI and generated stubs for the distill-serve gRPC API."""

from distill_serve.client.client import (
    AsyncClient,
    AudioBlock,
    AudioResult,
    Client,
    DistillError,
    GenerationStats,
    ModelInfo,
    ModelStatus,
    StreamHeader,
    build_spec,
)
from distill_serve.client.live import AsyncLiveSession, LiveSession
from distill_serve.client.records import ControlRefusal

__all__ = [
    "AsyncClient",
    "AsyncLiveSession",
    "AudioBlock",
    "AudioResult",
    "Client",
    "ControlRefusal",
    "DistillError",
    "GenerationStats",
    "LiveSession",
    "ModelInfo",
    "ModelStatus",
    "StreamHeader",
    "build_spec",
]
