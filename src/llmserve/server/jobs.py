"""The app's batch jobs: the job store and the runner, owned by the lifespan (``app.state.jobs``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import HTTPConnection

from llmserve.batch.runner import BatchRunner
from llmserve.batch.store import AsyncStore, JobStore
from llmserve.server.registry import ModelRegistry
from llmserve.settings import Settings

logger = logging.getLogger(__name__)


class Jobs:
    def __init__(self, settings: Settings, registry: ModelRegistry, app, drain):
        self.settings = settings
        self.registry = registry
        self.store = AsyncStore(settings.data_dir)
        self.runner = BatchRunner(self.store, app, slots_for=self.slots_for, accepting=lambda: not drain.draining,
                                  max_lines=settings.batch_max_lines)
        logger.info("batch jobs in %s", self.store.sync.root)

    def slots_for(self, model_name: Any) -> tuple[str, int]:
        """Batch lines of one model run at most this many at a time (its slots, or --batch-concurrency)."""
        models = self.registry.models
        if model_name is None:
            model = next(iter(models.values()))
        elif isinstance(model_name, str) and model_name in models:
            model = models[model_name]
        else:
            return "?", 1  # the route answers 404 at once
        return model.name, self.settings.batch_concurrency or model.settings.slots()

    def start(self) -> None:
        self.runner.start()

    async def aclose(self) -> None:
        await self.runner.aclose()
        await asyncio.to_thread(self.store.close)

    async def call(self, fn, *args: Any, **kw: Any) -> Any:
        return await self.store.call(fn, *args, **kw)

    async def refresh_metrics(self, metrics) -> None:
        lines = await self.store.call(JobStore.line_counts)
        running = self.runner.running_lines
        metrics.batch_lines.labels("queued").set(max(0, lines["pending"] - running))
        metrics.batch_lines.labels("running").set(running)
        metrics.batch_lines.labels("completed").set(lines["completed"])
        metrics.batch_lines.labels("failed").set(lines["failed"])
        for status, count in (await self.store.call(JobStore.batch_counts)).items():
            metrics.batches.labels(status).set(count)


def get_jobs(conn: HTTPConnection) -> Jobs:
    return conn.app.state.jobs
