"""A LoRA adapter served as its own model name: everything of its base model, but the name and
the adapter its requests generate under (``GenerationRequest.adapter``)."""

from __future__ import annotations

from typing import Any

from llmserve.chat_model import AsyncChatModel


class AdapterModel(AsyncChatModel):
    """A view of ``base``: same engine, template, sampling defaults, pool and watchdog. It is
    loaded and closed with its base (``start``/``aclose`` do nothing)."""

    def __init__(self, base: AsyncChatModel, name: str):  # no super().__init__: the base's state is shared
        self.base = base
        self.name = name
        self.adapter = name
        self.parent = base.name

    def __getattr__(self, attr: str) -> Any:  # only for what this view does not hold itself
        if attr == "base":
            raise AttributeError(attr)
        return getattr(self.base, attr)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def adapter_models(base: AsyncChatModel) -> list[AdapterModel]:
    """The ``--lora`` adapters of ``base``'s settings, as models."""
    return [AdapterModel(base, spec.name) for spec in base.settings.adapters()]
