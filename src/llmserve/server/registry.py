"""The models a server serves: loaded in the background so /health can say 'loading'."""

from __future__ import annotations

import asyncio
import logging

from llmserve.chat_model import AsyncChatModel
from llmserve.errors import EngineError, ModelLoading, ModelNotFound

logger = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(self, models: list[AsyncChatModel]):
        self.models = {m.name: m for m in models}
        self.failures: dict[str, str] = {}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Starts loading every model and returns at once."""
        self._tasks = [asyncio.create_task(self._load(m), name=f"load-{m.name}") for m in self.models.values()]

    async def wait_ready(self) -> None:
        await asyncio.gather(*self._tasks)

    async def _load(self, model: AsyncChatModel) -> None:
        try:
            await model.start()
        except Exception as exc:  # keep serving the others; /health reports it
            logger.exception("model %s failed to load", model.name)
            self.failures[model.name] = str(exc)

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for model in self.models.values():
            await model.aclose()

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self.models.values())

    def get(self, name: str | None) -> AsyncChatModel:
        if name is None:
            model = next(iter(self.models.values()))
        else:
            model = self.models.get(name)
            if model is None:
                raise ModelNotFound(f"The model {name!r} does not exist", param="model")
        if model.name in self.failures:
            raise EngineError(f"model {model.name!r} failed to load: {self.failures[model.name]}")
        if not model.ready:
            raise ModelLoading(f"model {model.name!r} is still loading", retry_after=5)
        return model
