"""The serving stage, one package per layer; each imports only from the layers below it
(``docs/architecture.md``, enforced by ``tests/test_layers.py``)::

    ray       Ray Serve deployment, launching, the metrics bridge
    api       the gRPC edge: servicer, conversion, admission, the live loop, interceptors
    models    the model repository, the demo bundle cache, the server's metrics
    engine    onnxruntime: CPU sessions, the CUDA path, the device worker, the step scheduler
    pipeline  pure numpy: params -> trajectory -> mel -> vocoder steps -> audio blocks
"""
