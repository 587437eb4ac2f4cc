"""The model deployment: one unchanged engine per replica, its deltas streamed in small lists.

The first delta of a request crosses the handle alone and at once (time to first token); after
that, deltas are gathered for up to ``stream_interval`` seconds or ``MAX_BATCH`` deltas, so a
stream costs a Ray object per few tokens instead of one per token. Errors cross as data
(``wire.error_to_wire``): the ingress rebuilds the same llmserve error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import Counter

from llmserve.chat_model import AsyncChatModel
from llmserve.errors import EngineError, LLMServeError
from llmserve.serve_ray import cluster
from llmserve.serve_ray.metrics import HUB_PUSH_PERIOD, replica_families
from llmserve.serve_ray.wire import Chunk, error_to_wire
from llmserve.server.metrics import PREFIX, Metrics
from llmserve.settings import ModelSettings
from llmserve.types import Delta, GenerationRequest

logger = logging.getLogger(__name__)

MAX_BATCH = 16  # most deltas in one chunk
_END = object()


class ModelReplica:
    """Deployed with ``serve.deployment(ModelReplica)`` by ``driver.py``; Ray imports it here."""

    async def __init__(self, model_json: str, stream_interval: float, hub_name: str, log_level: str):
        from ray import serve

        from llmserve.log import configure_logging

        configure_logging(log_level)
        cluster.bind_replica_grpc_to_loopback()
        self.settings = ModelSettings.model_validate_json(model_json)
        self.stream_interval = stream_interval
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.model = AsyncChatModel(settings=self.settings)
        await self.model.start()
        self.metrics = Metrics()
        self.metrics.add_model(self.model.name)
        self.messages = Counter(PREFIX + "stream_messages", "Messages (lists of deltas) streamed to the ingress.",
                                ["model_name"], registry=self.metrics.registry).labels(self.model.name)
        self._hub_name = hub_name
        self._push_task = asyncio.create_task(self._push_metrics(), name="llmserve-metrics-push")
        logger.info("replica %s serves %s", self.replica, self.model.name)

    # -- what the ingress asks --------------------------------------------------------------------
    async def describe(self) -> dict[str, Any]:
        return {"capabilities": self.model.engine.capabilities, "replica": self.replica}

    async def generate(self, request: GenerationRequest, **_: Any) -> AsyncIterator[Chunk]:
        """Chunks of ``request``'s deltas; the last one finishes it or carries its error."""
        arrival = time.monotonic()
        queue: asyncio.Queue = asyncio.Queue()
        deltas = self.metrics.observe(self.model.agenerate(request), request, self.model.name, arrival,
                                      stats=self.model.engine.stats)
        pump = asyncio.create_task(self._pump(deltas, queue))
        try:
            first = True
            while True:
                items = [await queue.get()]
                if first:
                    while not queue.empty() and len(items) < MAX_BATCH:
                        items.append(queue.get_nowait())
                else:
                    deadline = time.monotonic() + self.stream_interval
                    while len(items) < MAX_BATCH and not _terminal(items[-1]):
                        if not queue.empty():
                            items.append(queue.get_nowait())
                            continue
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        try:
                            items.append(await asyncio.wait_for(queue.get(), left))
                        except asyncio.TimeoutError:
                            break
                chunk, done = self._chunk(items, request, arrival if first else None)
                first = False
                self.messages.inc()
                yield chunk
                if done:
                    return
        finally:
            pump.cancel()  # the ingress went away (or we are done): abort in the engine
            await asyncio.gather(pump, return_exceptions=True)

    async def _pump(self, deltas: AsyncIterator[Delta], queue: asyncio.Queue) -> None:
        try:
            async for delta in deltas:
                queue.put_nowait(delta)
            queue.put_nowait(_END)
        except LLMServeError as exc:
            queue.put_nowait(exc)
        except Exception:
            logger.exception("generation failed in replica %s", self.replica)
            queue.put_nowait(EngineError("the engine failed while generating"))
        finally:
            await deltas.aclose()

    def _chunk(self, items: list, request: GenerationRequest, arrival: float | None) -> tuple[Chunk, bool]:
        out: list[Delta] = []
        error = None
        done = False
        for item in items:
            if item is _END:
                done = True
            elif isinstance(item, LLMServeError):
                error, done = error_to_wire(item), True
            else:
                out.append(item)
                done = done or item.finish_reason is not None
        facts: dict[str, Any] = {}
        if arrival is not None:
            facts["engine_ttft"] = time.monotonic() - arrival
            started = request.timing.started_at
            if started is not None:
                facts["engine_queue"] = max(0.0, started - arrival)
            facts["replica"] = self.replica
        return Chunk(tuple(out), error=error, **facts), done

    # -- health, metrics, shutdown ----------------------------------------------------------------
    async def check_health(self) -> None:
        """Serve calls it periodically; raising marks the replica unhealthy (Serve replaces it)."""
        if not self.model.ready or not self.model.engine.stats().loaded:
            raise RuntimeError(f"the engine of {self.model.name!r} is not loaded")
        worker = getattr(self.model.engine, "scheduler", None)  # the engine's batching loop, if it has one
        thread = getattr(worker, "_thread", None)
        if thread is not None and not thread.is_alive():
            raise RuntimeError(f"the engine loop of {self.model.name!r} has stopped")
        if self.model.stalled:  # the watchdog's verdict: work in flight and no step for --watchdog-timeout
            raise RuntimeError(f"the engine of {self.model.name!r} made no progress for "
                               f"{self.model.stalled_for():.0f} s with work in flight")

    async def _push_metrics(self) -> None:
        import ray

        hub = None
        while True:
            try:
                if hub is None:
                    hub = ray.get_actor(self._hub_name)
                stats = self.model.engine.stats()
                self.metrics.refresh([self.model])  # the gauges as of now, as a scrape would
                await hub.put.remote(self.model.name, self.replica, replica_families(self.metrics, self.replica),
                                     (stats.running, stats.waiting))
            except Exception:  # the hub is optional: metrics must never take a replica down
                logger.debug("metrics push failed", exc_info=True)
                hub = None
            await asyncio.sleep(HUB_PUSH_PERIOD)

    async def __del__(self) -> None:
        self._push_task.cancel()
        await self.model.aclose()


def _terminal(item: object) -> bool:
    return item is _END or isinstance(item, LLMServeError) or (isinstance(item, Delta) and item.finish_reason is not None)
