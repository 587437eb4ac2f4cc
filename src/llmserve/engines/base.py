"""The engine interface: small, async, plain dataclasses in and out."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from llmserve.errors import InvalidRequest, ModelNotFound
from llmserve.types import Capabilities, Delta, Embeddings, EngineStats, GenerationRequest, Message

if TYPE_CHECKING:
    from llmserve.lora import AdapterSpec
    from llmserve.settings import ModelSettings


class Embedder(abc.ABC):
    """An optional engine capability: ``engine.embedder`` is one, or None when it cannot embed."""

    dimensions: int

    @abc.abstractmethod
    async def aembed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        """One pooled vector per input (a text, or token ids)."""

    async def aclose(self) -> None:
        """Free what the embedder holds; the engine calls it from ``stop``."""


class Engine(abc.ABC):
    """One loaded model behind one backend.

    ``generate`` returns an async iterator of ``Delta``; closing it early (``aclose``, or the
    consumer task being cancelled) aborts the request inside the engine and frees its slot.
    Errors are raised as ``llmserve.errors`` exceptions, never backend ones; admission errors
    (queue full, context too long) surface at the first ``__anext__``, before any delta.
    """

    embedder: Embedder | None = None  # optional capability: embeddings (see ``Embedder``)

    @classmethod
    def preflight(cls, settings: ModelSettings) -> None:
        """Quick checks before a server binds, loading no weights: raises ``ModelNotFound`` or
        ``InvalidModel`` (saying what is wrong) when ``settings`` name nothing this engine can
        load. The default checks nothing."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model. Slow; called once, off the request path."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Abort everything in flight and free the model."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream the completion of ``request.prompt_tokens``."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a request wherever it is (queued, prefilling, decoding). Unknown ids are ignored."""

    @abc.abstractmethod
    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``. ``parse_special``: special-token strings written in the text
        (``<|im_end|>``) become those control tokens; off, they are tokenized as plain text."""

    @abc.abstractmethod
    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The inverse of ``tokenize``: special tokens are written out; unknown ids are InvalidRequest."""

    @abc.abstractmethod
    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The prompt text for ``messages`` (and OpenAI ``tools``), rendered with the model's own chat
        template (``ChatTemplate.render``; ``capabilities.tool_format`` says how calls will look)."""

    # -- LoRA adapters (optional: engines that cannot apply them keep these) --------------------
    async def load_adapter(self, spec: AdapterSpec) -> None:
        """Load a LoRA adapter; requests name it in ``GenerationRequest.adapter``. Raises
        ``AdapterError`` when it does not fit the model."""
        raise InvalidRequest(f"the {type(self).__name__} engine does not serve LoRA adapters", param="lora_path")

    async def unload_adapter(self, name: str) -> None:
        """Requests can no longer name it; running ones finish."""
        raise ModelNotFound(f"The LoRA adapter {name!r} is not loaded", param="lora_name")

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...
