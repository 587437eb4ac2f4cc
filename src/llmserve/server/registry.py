"""The models a server serves: loaded in the background so /health can say 'loading'."""

from __future__ import annotations

import asyncio
import logging

from llmserve.adapter_model import AdapterModel, adapter_models
from llmserve.chat_model import AsyncChatModel
from llmserve.errors import EngineError, ModelLoading, ModelNotFound

logger = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(self, models: list[AsyncChatModel]):
        self.models = {m.name: m for m in models}
        for base in models:  # --lora adapters: each its own model name beside its base
            for view in adapter_models(base):
                self.models[view.name] = view
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
        failed = model.parent or model.name  # an adapter fails with its base
        if failed in self.failures:
            raise EngineError(f"model {failed!r} failed to load: {self.failures[failed]}")
        if not model.ready:
            raise ModelLoading(f"model {model.name!r} is still loading", retry_after=5)
        return model

    # -- LoRA adapters at run time (POST /v1/load_lora_adapter, /v1/unload_lora_adapter) ---------
    def base_for(self, name: str | None) -> AsyncChatModel:
        """The base model a new adapter goes on: ``name``, or the only/first model."""
        if name is None:
            return next(m for m in self.models.values() if m.parent is None)
        model = self.models.get(name)
        if model is None or model.parent is not None:
            raise ModelNotFound(f"The base model {name!r} does not exist", param="base_model_name")
        return model

    def add_adapter(self, base: AsyncChatModel, name: str) -> AdapterModel:
        view = AdapterModel(base, name)
        self.models[name] = view
        return view

    def remove_adapter(self, name: str) -> AdapterModel:
        view = self.models.get(name)
        if not isinstance(view, AdapterModel):
            raise ModelNotFound(f"The LoRA adapter {name!r} is not loaded", param="lora_name")
        del self.models[name]
        return view
