"""Execution: the only code that imports onnxruntime. CPU sessions and request runners, the
CUDA primary path (build, retry, out-of-memory fallback, fault injection), the device worker
and the step scheduler that batches streaming-vocoder steps. It implements the pipeline's
runner port (``server/pipeline/runner.py``)."""
