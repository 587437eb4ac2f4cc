"""LoRA adapters on the transformers engine: PEFT's mixed-batch inference, one adapter per batch
row (``adapter_names``; ``__base__`` rows run the base model), so no grouping is needed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence as Rows
from typing import Any

from llmserve.engines.hf.model import LoadedModel
from llmserve.errors import ModelNotFound

logger = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


class HFAdapters:
    """The adapters loaded on one model. ``lock`` is held by every forward and every load, so the
    model is never wrapped or changed under a running forward."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.lock = threading.Lock()
        self._names: set[str] = set()
        self._peft = False  # the model is wrapped in a PeftModel (from the first adapter on)

    def load(self, name: str, path: str, scale: float) -> None:
        from peft import PeftModel

        with self.lock:
            model = self.loaded.model
            if not self._peft:
                model = PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=False)
                model.eval()
                self.loaded.model = model
                self._peft = True
            else:
                model.load_adapter(path, adapter_name=name, is_trainable=False)
            if scale != 1.0:
                for module in model.modules():
                    scaling = getattr(module, "scaling", None)
                    if isinstance(scaling, dict) and name in scaling:
                        scaling[name] *= scale
            self._names.add(name)
        logger.info("LoRA %s loaded from %s (scale %g)", name, path, scale)

    def unload(self, name: str) -> None:
        """New requests can no longer name it; its weights stay (a running row may still use them)."""
        with self.lock:
            if name not in self._names:
                raise ModelNotFound(f"The LoRA adapter {name!r} is not loaded", param="lora_name")
            self._names.discard(name)

    def check(self, name: str | None) -> None:
        if name is not None and name not in self._names:
            raise ModelNotFound(f"The model {name!r} does not exist (its LoRA adapter is not loaded)", param="model")

    def forward_kwargs(self, adapters: Rows[str | None]) -> dict[str, Any]:
        """What a forward over rows generating under ``adapters`` passes the model."""
        if not self._peft:
            return {}
        return {"adapter_names": [a or BASE for a in adapters]}
