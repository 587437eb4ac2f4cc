"""``/metrics`` over Ray: the ingress's own series, every replica's engine series, and Serve's share.

- The ingress's metric set is llmserve's usual one (``server/metrics.py``), measured where the
  client is: time to first token there includes the trip through Serve.
- Each replica measures its engine with the same set, renamed ``llmserve:replica_*`` and labelled
  ``replica``; it pushes them every ``HUB_PUSH_PERIOD`` seconds to a small hub actor, and the
  ingress merges what the hub holds into its exposition (a replica gone for ``STALE_AFTER``
  seconds drops out).
- ``llmserve:serve_overhead_seconds``: per request, the time to first token seen by the ingress
  minus the one the replica measured — the time spent in Serve (routing, queueing at the handle,
  transport) apart from the engine.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

from llmserve.server.metrics import PREFIX, TTFT_BUCKETS, Metrics

logger = logging.getLogger(__name__)

HUB_PUSH_PERIOD = 1.0
STALE_AFTER = 15.0
REPLICA_PREFIX = PREFIX + "replica_"


def replica_families(metrics: Metrics, replica: str) -> list[Metric]:
    """``metrics`` renamed ``llmserve:replica_*`` with a ``replica`` label (plain, picklable objects)."""
    out = []
    for family in metrics.registry.collect():
        renamed = Metric(family.name.replace(PREFIX, REPLICA_PREFIX, 1), family.documentation, family.type,
                         family.unit)
        for s in family.samples:
            renamed.add_sample(s.name.replace(PREFIX, REPLICA_PREFIX, 1), {**s.labels, "replica": replica},
                               s.value, s.timestamp, s.exemplar)
        out.append(renamed)
    return out


class MetricsHub:
    """A Ray actor (``ray.remote(num_cpus=0)`` in the driver): the latest metrics of each replica."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], tuple[float, list[Metric], tuple[int, int]]] = {}

    def put(self, model: str, replica: str, families: list[Metric], load: tuple[int, int]) -> None:
        self._latest[(model, replica)] = (time.monotonic(), families, load)

    def snapshot(self) -> dict[tuple[str, str], tuple[list[Metric], tuple[int, int]]]:
        now = time.monotonic()
        for key in [k for k, (t, _, _) in self._latest.items() if now - t > STALE_AFTER]:
            del self._latest[key]
        return {k: (fams, load) for k, (_, fams, load) in self._latest.items()}


class _Merged:
    """A collector yielding the replicas' families, merged by name (one family, many replicas)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self):
        return iter(self.families)

    def update(self, snapshot: dict[tuple[str, str], tuple[list[Metric], tuple[int, int]]]) -> None:
        merged: dict[str, Metric] = {}
        for families, _ in snapshot.values():
            for family in families:
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                into.samples.extend(family.samples)
        self.families = list(merged.values())


class RayMetrics(Metrics):
    """The ingress's metric set plus the replicas' (from the hub) and Serve's overhead."""

    def __init__(self, hub_name: str) -> None:
        super().__init__()
        self.serve_overhead = Histogram(PREFIX + "serve_overhead_seconds", "Time to first token spent in Ray "
                                        "Serve (routing, handle queue, transport) apart from the engine.",
                                        ["model_name"], buckets=TTFT_BUCKETS, registry=self.registry)
        self._replicas = _Merged()
        self._replica_registry = CollectorRegistry()
        self._replica_registry.register(self._replicas)
        self._hub_name = hub_name
        self._poll_task: asyncio.Task | None = None

    def add_model(self, name: str) -> None:
        super().add_model(name)
        self.serve_overhead.labels(name)

    def start_polling(self) -> None:
        self._poll_task = asyncio.create_task(self._poll(), name="llmserve-metrics-poll")

    async def _poll(self) -> None:
        import ray

        hub = None
        while True:
            try:
                if hub is None:
                    hub = ray.get_actor(self._hub_name)
                self._replicas.update(await hub.snapshot.remote())
            except Exception:
                logger.debug("metrics poll failed", exc_info=True)
                hub = None
            await asyncio.sleep(HUB_PUSH_PERIOD)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry) + generate_latest(self._replica_registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
        super().close()

