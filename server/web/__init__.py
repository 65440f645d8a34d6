"""The web edge (``serve --http-port``): the service over HTTP and WebSocket for browsers,
in the gRPC server's process and over its servicer, admission and limits (docs/api.md,
"WebSocket and HTTP"), and the playground page."""
