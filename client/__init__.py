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

__all__ = [
    "AsyncClient",
    "AudioBlock",
    "AudioResult",
    "Client",
    "DistillError",
    "GenerationStats",
    "ModelInfo",
    "StreamHeader",
    "build_spec",
]
