"""The models a server serves: the repository (load, unload, leases), the demo bundle cache,
and the server's Prometheus metrics keyed by model. Used by the plain server and by Ray."""
