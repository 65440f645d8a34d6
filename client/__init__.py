"""Python client, CLI and generated stubs for the distill-serve gRPC API."""
