"""Our Prometheus metrics in Ray's metrics export, from every Serve replica.

A plain server serves its registry on ``--metrics-port``; a Ray Serve replica has no port of
its own, and Ray collects what its workers record through ``ray.util.metrics`` into one
Prometheus endpoint per node (``ray start --metrics-export-port``), prefixed ``ray_``. This
copies the replica's registry there every ``period_s``: each sample becomes a Ray gauge of
the same name, labels and value (so ``distill_requests_total`` is exported as
``ray_distill_requests_total``, still monotonic; a histogram as its ``_bucket``, ``_sum``
and ``_count`` series), plus a ``replica`` label. Ray itself adds its worker and node tags.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry

#: How often a replica copies its registry (Ray's own export runs every few seconds).
PERIOD_S = 2.0


class RayMetricsBridge:
    """Copies ``registry`` into ``ray.util.metrics`` gauges; :meth:`start` runs it in a
    daemon thread (prometheus-client's collect and Ray's recorder are thread-safe)."""

    def __init__(self, registry: CollectorRegistry, replica: str) -> None:
        self._registry = registry
        self._replica = replica
        self._gauges: dict[str, Any] = {}
        self._stop = threading.Event()

    def export(self) -> int:
        """Copy every sample once; returns how many were copied."""
        from ray.util.metrics import Gauge

        copied = 0
        for family in self._registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):  # creation times: not a measurement
                    continue
                tags = {**sample.labels, "replica": self._replica}
                gauge = self._gauges.get(sample.name)
                if gauge is None:
                    gauge = Gauge(
                        sample.name,
                        description=family.documentation or sample.name,
                        tag_keys=tuple(sorted(tags)),
                    )
                    self._gauges[sample.name] = gauge
                gauge.set(float(sample.value), tags=tags)
                copied += 1
        return copied

    def start(self, period_s: float = PERIOD_S) -> None:
        def loop() -> None:
            while not self._stop.wait(period_s):
                self.export()

        threading.Thread(target=loop, name="ray-metrics-bridge", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
