"""LoRA adapters on the llama.cpp engine.

llama.cpp applies adapters per context, to every sequence of a ``llama_decode``: so the scheduler
splits each step's batch into one decode per adapter (base included), switching the context's
adapter set between them as llama-server does, and a sequence's KV cells belong to the adapter
they were computed under (the prefix cache never gives a base request an adapter's cells).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as ll

from llmserve.engines.llamacpp.model import LlamaContext, LlamaModel
from llmserve.errors import ModelNotFound
from llmserve.lora import AdapterError

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedAdapter:
    """One adapter loaded on the model; compared by identity (a reload under the same name is a
    different adapter: cached KV of the old one is never reused)."""

    name: str
    ptr: ctypes.c_void_p
    scale: float
    path: Path


class AdapterSet:
    """The adapters loaded on one model (any thread) and the one applied to its context (the
    scheduler's thread only)."""

    def __init__(self, model: LlamaModel, ctx: LlamaContext):
        self.model = model
        self.ctx = ctx
        self._loaded: dict[str, LoadedAdapter] = {}
        self._lock = threading.Lock()
        self.applied: LoadedAdapter | None = None
        self.switches = 0  # adapter-set changes on the context (for tests and metrics)

    # -- loading (engine start, admin API) ----------------------------------------------------
    def load(self, name: str, path: Path, scale: float) -> LoadedAdapter:
        ptr = ll.llama_adapter_lora_init(self.model.ptr, str(path).encode())
        if not ptr:
            raise AdapterError(f"LoRA {name!r}: llama.cpp could not load {path} for this model")
        adapter = LoadedAdapter(name, ptr, scale, path)
        with self._lock:
            self._loaded[name] = adapter
        logger.info("LoRA %s loaded from %s (scale %g)", name, path, scale)
        return adapter

    def unload(self, name: str) -> None:
        """New requests can no longer name it; running ones finish under it. Its weights stay
        with the model until the model is freed (llama.cpp frees adapters with their model)."""
        with self._lock:
            if self._loaded.pop(name, None) is None:
                raise ModelNotFound(f"The LoRA adapter {name!r} is not loaded", param="lora_name")

    def names(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def resolve(self, name: str | None) -> LoadedAdapter | None:
        if name is None:
            return None
        with self._lock:
            adapter = self._loaded.get(name)
        if adapter is None:
            raise ModelNotFound(f"The model {name!r} does not exist (its LoRA adapter is not loaded)", param="model")
        return adapter

    # -- the scheduler's thread ---------------------------------------------------------------
    def groups(self, adapters: list[LoadedAdapter | None]) -> list[LoadedAdapter | None]:
        """The distinct adapters of a step's sequences, the one applied now first (one switch
        fewer); ``[self.applied]`` when there are none."""
        seen: list[LoadedAdapter | None] = []
        for adapter in adapters:
            if not any(adapter is s for s in seen):
                seen.append(adapter)
        seen.sort(key=lambda a: a is not self.applied)
        return seen or [self.applied]

    def apply(self, adapter: LoadedAdapter | None) -> None:
        """Makes ``adapter`` (None: the base model) the context's adapter set for the next decode."""
        if adapter is self.applied:
            return
        if adapter is None:
            rc = ll.llama_set_adapters_lora(self.ctx.ptr, None, 0, None)
        else:
            ptrs = (ll.llama_adapter_lora_p_ctypes * 1)(adapter.ptr)
            scales = (ctypes.c_float * 1)(adapter.scale)
            rc = ll.llama_set_adapters_lora(self.ctx.ptr, ptrs, 1, scales)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed ({rc})")
        self.applied = adapter
        self.switches += 1
