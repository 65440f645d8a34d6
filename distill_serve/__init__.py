"""distill-serve: a gRPC serving backend for the Distill generative-audio model."""

__version__ = "0.1.0"
