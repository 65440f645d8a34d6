"""Python client, CLI and generated stubs for the distill-serve gRPC API."""

from distill_serve.client.client import (
    AsyncClient,
    AudioBlock,
    AudioResult,
    Client,
    DistillError,
    GenerationStats,
    ModelInfo,
    StreamHeader,
    build_spec,
)
from distill_serve.client.live import AsyncLiveSession, LiveSession

__all__ = [
    "AsyncClient",
    "AsyncLiveSession",
    "AudioBlock",
    "AudioResult",
    "Client",
    "DistillError",
    "GenerationStats",
    "LiveSession",
    "ModelInfo",
    "StreamHeader",
    "build_spec",
]
