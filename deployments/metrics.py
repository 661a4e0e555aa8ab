"""percept's metrics through Ray's metrics API (``ray.util.metrics``).

Every replica records into its own Ray metric objects; Ray's per-node metrics agent exports
them on ``http://<node ip>:<metrics_export_port>/metrics`` with a ``ray_`` prefix (the names
are in `pipeline/metrics.py`; each series also carries Ray's labels ``WorkerId``,
``NodeAddress``, ``SessionName``, so sum over replicas with ``sum by (camera)``). The port is
``ray start --metrics-export-port=N`` (``ray.init(_metrics_export_port=N)`` for a local Ray),
random when not set; ``ray.nodes()`` reports it as ``MetricsExportPort``. Decoder replicas
advertise every node's endpoint in Redis (``<prefix>:metrics:endpoints``) for `percept top`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable, Mapping

from pipeline.metrics import (
    ALL_METRICS,
    CameraMetrics,
    MetricDef,
    Recorder,
    collect_every,
    write_endpoints,
)

log = logging.getLogger("percept.metrics")


class RayRecorder(Recorder):
    """`Recorder` on ``ray.util.metrics`` Counter / Gauge / Histogram (one object per metric)."""

    enabled = True

    def __init__(self, metrics: tuple[MetricDef, ...] = ALL_METRICS):
        from ray.util.metrics import Counter, Gauge, Histogram

        self._m: dict[str, Any] = {}
        for m in metrics:
            if m.kind == "counter":
                self._m[m.name] = Counter(m.name, m.help, tag_keys=m.tags)
            elif m.kind == "gauge":
                self._m[m.name] = Gauge(m.name, m.help, tag_keys=m.tags)
            else:
                self._m[m.name] = Histogram(m.name, m.help, boundaries=list(m.buckets), tag_keys=m.tags)

    def inc(self, metric: MetricDef, value: float, tags: Mapping[str, str]) -> None:
        self._m[metric.name].inc(float(value), tags=dict(tags))

    def set(self, metric: MetricDef, value: float, tags: Mapping[str, str]) -> None:
        self._m[metric.name].set(float(value), tags=dict(tags))

    def observe(self, metric: MetricDef, value: float, tags: Mapping[str, str]) -> None:
        self._m[metric.name].observe(float(value), tags=dict(tags))


def metrics_endpoints() -> list[str]:
    """Every alive Ray node's metrics URL (``ray.nodes()``: NodeManagerAddress, MetricsExportPort)."""
    import ray

    return sorted(f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
                  for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort"))


async def advertise_endpoints(client: Any, prefix: str, every_s: float = 30.0) -> None:
    """Keeps the nodes' metrics URLs in Redis (expiring 3 rounds after the last refresh)."""
    while True:
        try:
            urls = await asyncio.to_thread(metrics_endpoints)
            await asyncio.to_thread(write_endpoints, client, prefix, urls, 3 * every_s)
        except Exception as exc:  # Redis away, GCS busy: the next round tries again
            log.debug("metrics endpoints not advertised: %s", exc)
        await asyncio.sleep(every_s)


async def decoder_metrics(metrics: CameraMetrics, supervisor: Any, publisher: Any, client: Any,
                          prefix: str, interval_s: float = 2.0, failed: Callable[[], Iterable[str]] = tuple) -> None:
    """A decoder replica's metrics task: camera and publisher metrics every ``interval_s`` (with
    the cameras that cannot run, ``failed``), and the endpoints advertised in Redis."""
    def conductors() -> dict[str, Any]:
        return {cid: entry.conductor for cid, entry in supervisor.running.items()}

    await asyncio.gather(collect_every(metrics, conductors, publisher, interval_s, failed),
                         advertise_endpoints(client, prefix))
