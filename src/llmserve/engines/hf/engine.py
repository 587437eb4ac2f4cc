"""The transformers engine: loads the model, owns the batching thread, bridges it to asyncio."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

from llmserve.chat_template import ChatTemplate
from llmserve.engines.base import Engine
from llmserve.engines.hf.model import LoadedModel, load
from llmserve.engines.hf.scheduler import Scheduler
from llmserve.engines.worker import LoopBridge
from llmserve.errors import ModelLoading
from llmserve.settings import ModelSettings
from llmserve.types import ALL_SAMPLING, Capabilities, Delta, EngineStats, GenerationRequest, Message

logger = logging.getLogger(__name__)

SAMPLING = ALL_SAMPLING - {"prompt_logprobs"}  # every SamplingParams field but prompt logprobs (echo)


class HFEngine(Engine):
    """Options: ``dtype`` (``bfloat16`` default, ``float32``, ``float16``)."""

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.loaded: LoadedModel | None = None
        self.scheduler: Scheduler | None = None
        self._bridge = LoopBridge()

    async def start(self) -> None:
        self._bridge.bind()
        t0 = time.monotonic()
        logger.info("loading %s with transformers", self.settings.resolved_path())
        await asyncio.to_thread(self._load)
        logger.info("model %s ready in %.1f s (%s, %d slots, %d threads)", self.settings.served_name(),
                    time.monotonic() - t0, self.loaded.dtype, self.settings.parallel, self.settings.resolved_threads())

    def _load(self) -> None:
        s = self.settings
        loaded = load(s)
        self.scheduler = Scheduler(loaded, n_slots=s.parallel, max_queue=s.max_queue, queue_timeout=s.queue_timeout,
                                   prefill_tokens=s.batch_size, threads=s.resolved_threads(), emit=self._bridge.emit)
        self.loaded = loaded
        self.scheduler.start()

    async def stop(self) -> None:
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop)
            self.scheduler = None
        self.loaded = None

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        return self._bridge.stream(self._require_scheduler, request)

    async def abort(self, request_id: str) -> None:
        if self.scheduler is not None:
            self.scheduler.cancel(request_id)

    def _require_scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        return self.scheduler

    def _require(self) -> LoadedModel:
        if self.loaded is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        return self.loaded

    # -- model facts ------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        return list(self._require().tokenizer.encode(text, add_special_tokens=add_special))

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._require().tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        template: ChatTemplate = self._require().template
        return template.render(messages, add_generation_prompt=add_generation_prompt)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(sampling=SAMPLING, max_context=self.loaded.max_context if self.loaded else 0,
                            vocab_size=self.loaded.model.config.vocab_size if self.loaded else 0)

    def stats(self) -> EngineStats:
        s = self.scheduler
        if s is None:
            return EngineStats(loaded=False)
        return EngineStats(loaded=True, running=s.n_running, waiting=s.n_waiting)

