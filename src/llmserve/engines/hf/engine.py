"""The transformers engine: loads the model, owns the batching thread, bridges it to asyncio."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from contextlib import aclosing

from llmserve.chat_template import ChatTemplate
from llmserve.engines.base import Engine
from llmserve.engines.transformers_check import check_transformers_model
from llmserve.engines.hf.model import LoadedModel, load
from llmserve.engines.hf.scheduler import Scheduler
from llmserve.engines.hftok import HFTokenizing
from llmserve.engines.worker import LoopBridge
from llmserve.errors import ModelLoading
from llmserve.settings import ModelSettings
from llmserve.structured import KINDS, GrammarCompiler
from llmserve.types import ALL_SAMPLING, Capabilities, Delta, EngineStats, GenerationRequest, Message

logger = logging.getLogger(__name__)

SAMPLING = ALL_SAMPLING - {"prompt_logprobs"}  # every SamplingParams field but prompt logprobs (echo)


class HFEngine(Engine):
    """Options: ``dtype`` (``bfloat16`` default, ``float32``, ``float16``)."""

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.loaded: LoadedModel | None = None
        self.tokens: HFTokenizing | None = None
        self.scheduler: Scheduler | None = None
        self.grammars: GrammarCompiler | None = None
        self._bridge = LoopBridge()

    @classmethod
    def preflight(cls, settings: ModelSettings) -> None:
        """A GGUF transformers can read, or an HF directory with a known config and weights."""
        check_transformers_model(Path(settings.resolved_path()), "hf")

    async def start(self) -> None:
        self._bridge.bind()
        t0 = time.monotonic()
        logger.info("loading %s with transformers", self.settings.resolved_path())
        await asyncio.to_thread(self._load)
        logger.info("model %s ready in %.1f s (%s, %d slots, %d threads)", self.settings.served_name(),
                    time.monotonic() - t0, self.loaded.dtype, self.settings.slots(), self.settings.resolved_threads())

    def _load(self) -> None:
        s = self.settings
        loaded = load(s)
        self.scheduler = Scheduler(loaded, n_slots=s.slots(), max_queue=s.max_queue, queue_timeout=s.queue_timeout,
                                   prefill_tokens=s.batch_size, threads=s.resolved_threads(), emit=self._bridge.emit)
        for spec in s.adapters():
            self._load_adapter(spec)
        self.tokens = HFTokenizing(loaded.tokenizer)
        self.loaded = loaded
        self.grammars = GrammarCompiler(self._grammar_backend)
        self.scheduler.start()

    # -- LoRA adapters (PEFT, one per batch row) -----------------------------------------------------
    def _load_adapter(self, spec) -> None:
        from pathlib import Path

        from llmserve.lora.resolve import resolve

        path = resolve(spec, Path(self.settings.resolved_path()), "hf")
        self.scheduler.adapters.load(spec.name, str(path), spec.scale)

    async def load_adapter(self, spec) -> None:
        await asyncio.to_thread(self._load_adapter, spec)

    async def unload_adapter(self, name: str) -> None:
        self._require_scheduler().adapters.unload(name)

    def _grammar_backend(self):
        from llmserve.structured.llguidance_backend import LLGuidanceBackend

        m = self.loaded
        return LLGuidanceBackend.from_hf(m.tokenizer, eog=sorted(m.eos_ids),
                                         n_vocab=m.model.config.get_text_config().vocab_size)

    async def stop(self) -> None:
        if self.grammars is not None:
            self.grammars.close()
            self.grammars = None
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop)
            self.scheduler = None
        self.loaded = None

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if request.constraint is not None:
            return self._generate_constrained(request)
        return self._bridge.stream(lambda: self._scheduler_for(request), request)

    async def _generate_constrained(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Compiles the constraint (off the loop, cached) before the request is queued."""
        scheduler = self._scheduler_for(request)
        guide = await self.grammars.guide(request.constraint)
        async with aclosing(self._bridge.stream(lambda: scheduler, request, guide=guide)) as deltas:
            async for delta in deltas:
                yield delta

    async def abort(self, request_id: str) -> None:
        if self.scheduler is not None:
            self.scheduler.cancel(request_id)

    def _scheduler_for(self, request: GenerationRequest) -> Scheduler:
        """At the stream's first step: an unknown adapter is a 404 before any delta."""
        scheduler = self._require_scheduler()
        scheduler.adapters.check(request.adapter)
        return scheduler

    def _require_scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        return self.scheduler

    def _require(self) -> LoadedModel:
        if self.loaded is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        return self.loaded

    # -- model facts ------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        self._require()
        return self.tokens.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._require().tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        template: ChatTemplate = self._require().template
        return template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    @property
    def capabilities(self) -> Capabilities:
        if self.loaded is None or self.tokens is None:
            return Capabilities(sampling=SAMPLING, max_context=0)
        return Capabilities(sampling=SAMPLING, max_context=self.loaded.max_context,
                            special_tokens=self.tokens.special_tokens, max_token_chars=self.tokens.max_token_chars,
                            tool_format=self.loaded.template.tool_format.name,
                            constraints=KINDS | {"trigger"},
                            vocab_size=self.loaded.model.config.get_text_config().vocab_size)

    def stats(self) -> EngineStats:
        s = self.scheduler
        if s is None:
            return EngineStats(loaded=False)
        return EngineStats(loaded=True, running=s.n_running, waiting=s.n_waiting, last_progress=s.last_progress)

