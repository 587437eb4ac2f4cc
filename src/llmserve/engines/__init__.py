"""Engine registry: import strings, so a backend is imported only when it is chosen."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from llmserve.errors import InvalidRequest

if TYPE_CHECKING:
    from llmserve.engines.base import Engine
    from llmserve.settings import ModelSettings

ENGINES: dict[str, str] = {
    "llamacpp": "llmserve.engines.llamacpp.engine:LlamaCppEngine",
    "hf": "llmserve.engines.hf:HFEngine",
    "vllm": "llmserve.engines.vllm:VLLMEngine",
    "fake": "llmserve.engines.fake:FakeEngine",
}


def create_engine(model: ModelSettings) -> Engine:
    try:
        target = ENGINES[model.engine]
    except KeyError:
        raise InvalidRequest(
            f"unknown engine {model.engine!r}; choose one of {', '.join(sorted(ENGINES))}",
            param="engine",
        ) from None
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(model)
