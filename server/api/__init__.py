"""The gRPC edge: the only server code that imports grpc or the stubs (``distill_serve.v1``).

Messages become plain params here, admission decides whether a call runs, and audio blocks
from the pipeline become messages; everything below knows nothing of gRPC.
"""
