"""The llama.cpp engine: loads the GGUF, owns the scheduler thread, bridges it to asyncio."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from contextlib import aclosing
from pathlib import Path

from llmserve.chat_template import ChatTemplate
from llmserve.engines.base import Engine
from llmserve.engines.llamacpp import dispatch, kernels
from llmserve.engines.llamacpp.adapters import AdapterSet
from llmserve.engines.llamacpp.embed import LlamaEmbedder, model_pooling
from llmserve.engines.llamacpp.model import LlamaContext, LlamaModel
from llmserve.engines.llamacpp.scheduler import Scheduler
from llmserve.engines.llamacpp.sizing import KVPlan, physical_memory, plan
from llmserve.engines.worker import LoopBridge
from llmserve.errors import EngineError, InvalidModel, InvalidRequest, ModelLoading, ModelNotFound
from llmserve.models import model_kind
from llmserve.settings import ModelSettings
from llmserve.structured import KINDS, GrammarCompiler
from llmserve.types import ALL_SAMPLING, Capabilities, Delta, EngineStats, GenerationRequest, Message

logger = logging.getLogger(__name__)

SAMPLING = ALL_SAMPLING  # every SamplingParams field is honoured
KERNEL_CACHE = Path.home() / ".cache" / "llmserve" / "kernels"  # per-CPU kernel measurements (dispatch.py)


class LlamaCppEngine(Engine):
    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.model: LlamaModel | None = None
        self.ctx: LlamaContext | None = None
        self.scheduler: Scheduler | None = None
        self.kv_plan: KVPlan | None = None
        self.template: ChatTemplate | None = None
        self._bridge = LoopBridge()
        self.embedder: LlamaEmbedder | None = None
        self.grammars: GrammarCompiler | None = None
        # options.embedding: serve this GGUF for /v1/embeddings only (no decode context, no template)
        self.embedding_only = bool(settings.options.get("embedding", False))
        self._special_tokens: frozenset[str] = frozenset()
        self._max_token_chars: int | None = None
        self.adapters: AdapterSet | None = None

    @classmethod
    def preflight(cls, settings: ModelSettings) -> None:
        """The path is a GGUF whose architecture llama.cpp knows and whose tensors are all in the
        file (llama.cpp reads its vocabulary and checks every tensor's bounds; no weights load),
        and there is a chat template (unless it is an embedding model)."""
        path = Path(settings.resolved_path())
        if model_kind(path) == "hf":
            raise InvalidModel(f"{path} is a Hugging Face model directory; the llamacpp engine loads GGUF files: "
                               "serve it with --engine hf (pip install -r requirements/hf.txt), or convert it to GGUF")
        if settings.chat_template and not Path(settings.chat_template).is_file():
            raise ModelNotFound(f"chat template file not found: {settings.chat_template}")
        llama_log = logging.getLogger("llama_cpp")
        propagate, llama_log.propagate = llama_log.propagate, False  # the reason goes into the error
        try:
            model = LlamaModel(path, vocab_only=True)
        finally:
            llama_log.propagate = propagate
        try:
            embedding = settings.options.get("embedding") or model_pooling(model) is not None
            if not (embedding or settings.chat_template or model.chat_template()):
                raise InvalidModel(f"{path} has no chat template in its metadata; pass --chat-template FILE")
        finally:
            model.close()

    async def start(self) -> None:
        self._bridge.bind()
        path = self.settings.resolved_path()
        t0 = time.monotonic()
        logger.info("loading %s with llama.cpp", path)
        # loading blocks for seconds: keep the event loop (and /health) responsive meanwhile
        await asyncio.to_thread(self._load, path)
        if self.embedding_only:
            logger.info("embedding model %s ready in %.1f s", self.settings.served_name(), time.monotonic() - t0)
            return
        p = self.kv_plan
        logger.info(
            "model %s ready in %.1f s (%d slots, %s KV cache of %d tokens: up to %d a request; %d threads)",
            self.settings.served_name(), time.monotonic() - t0, p.n_parallel, "unified" if p.unified else "split",
            p.n_ctx, self.ctx.n_ctx_seq, self.settings.resolved_threads(),
        )

    def _load(self, path: str) -> None:
        s = self.settings
        model = LlamaModel(path)
        kernels.log_build()
        dispatch.configure(model, path, s.resolved_threads(), s.q4_1_kernel, KERNEL_CACHE)
        opts = s.options
        if model_pooling(model) is not None and model.chat_template() is None:
            self.embedding_only = True  # an embedding GGUF (it declares a pooling type)
        # the embeddings context is created on first use; a chat model's gets a modest window
        n_embed_ctx = int(opts.get("embedding_ctx", s.ctx_size or (8192 if self.embedding_only else 2048)))
        self.embedder = LlamaEmbedder(model, n_ctx=n_embed_ctx, n_threads=s.resolved_threads(),
                                      pooling=opts.get("pooling"))
        if self.embedding_only:
            self.model = model
            return
        self.kv_plan = kv = plan(ctx_size=s.ctx_size, parallel=s.parallel, kv_split=s.kv_split,
                                 n_ctx_train=model.n_ctx_train, kv_bytes_per_token=model.kv_bytes_per_token(),
                                 memory=physical_memory())
        ctx = LlamaContext(model, n_ctx=kv.n_ctx, n_seq=kv.n_parallel, n_batch=s.batch_size,
                           n_threads=s.resolved_threads(), flash_attn=kv.flash_attn(s.flash_attn),
                           unified=kv.unified, n_ubatch=kv.n_ubatch(s.batch_size))
        source = Path(s.chat_template).read_text() if s.chat_template else model.chat_template()
        if source is None:
            raise EngineError(f"{path} has no chat template in its metadata; pass --chat-template FILE")
        self.template = ChatTemplate(source, bos_token=model.token_text(model.bos), eos_token=model.token_text(model.eos))
        self._special_tokens, self._max_token_chars = model.scan_vocab()
        self.model, self.ctx = model, ctx
        self.grammars = GrammarCompiler(self._grammar_backend)
        self.adapters = AdapterSet(model, ctx)
        for spec in s.adapters():
            self._load_adapter(spec)
        self.scheduler = Scheduler(model, ctx, n_slots=kv.n_parallel, max_queue=s.max_queue,
                                   queue_timeout=s.queue_timeout, emit=self._bridge.emit, unified=kv.unified,
                                   adapters=self.adapters)
        self.scheduler.start()

    # -- LoRA adapters -----------------------------------------------------------------------------
    def _load_adapter(self, spec) -> None:
        from llmserve.lora.resolve import resolve

        self.adapters.load(spec.name, resolve(spec, Path(self.settings.resolved_path()), "llamacpp"), spec.scale)

    async def load_adapter(self, spec) -> None:
        if self.adapters is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        await asyncio.to_thread(self._load_adapter, spec)

    async def unload_adapter(self, name: str) -> None:
        if self.adapters is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        self.adapters.unload(name)

    def _grammar_backend(self):
        from llmserve.structured.llguidance_backend import LLGuidanceBackend

        model = self.model
        eog = [t for t in range(model.n_vocab) if model.is_eog(t)]
        return LLGuidanceBackend.from_llamacpp(model.vocab, eog=eog, n_vocab=model.n_vocab)

    async def stop(self) -> None:
        if self.grammars is not None:
            self.grammars.close()
            self.grammars = None
        if self.embedder is not None:
            await self.embedder.aclose()
            self.embedder = None
        if self.scheduler is not None:
            await asyncio.to_thread(self.scheduler.stop)
            self.scheduler = None
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None
        if self.model is not None:
            self.model.close()
            self.model = None

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if request.constraint is not None or request.adapter is not None:
            return self._generate_constrained(request)
        return self._bridge.stream(lambda: self._worker_for(request), request)

    async def _generate_constrained(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Compiles the constraint (off the loop, cached) and finds the LoRA adapter before the
        request is queued: a bad schema is an InvalidRequest at the first ``__anext__``, before
        any delta."""
        worker = self._worker_for(request)
        lora = self.adapters.resolve(request.adapter)  # an unloaded adapter: 404 before any delta
        guide = await self.grammars.guide(request.constraint) if request.constraint is not None else None
        async with aclosing(self._bridge.stream(lambda: worker, request, guide=guide, lora=lora)) as deltas:
            async for delta in deltas:
                yield delta

    def _refuse_if_embedding_only(self) -> None:
        if self.embedding_only:
            raise InvalidRequest(f"model {self.settings.served_name()!r} serves embeddings only", param="model")

    def _worker_for(self, request: GenerationRequest) -> Scheduler:
        """Runs at the stream's first step: errors surface before any delta."""
        self._refuse_if_embedding_only()
        if self.scheduler is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        self._check_tokens(request.prompt_tokens, "prompt")
        return self.scheduler

    async def abort(self, request_id: str) -> None:
        if self.scheduler is not None:
            self.scheduler.cancel(request_id)

    # -- model facts ------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        if self.model is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        return self.model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        if self.model is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        self._check_tokens(token_ids, "tokens")
        return self.model.detokenize(token_ids, special=True)  # the inverse of tokenize

    def _check_tokens(self, token_ids: Sequence[int], param: str) -> None:
        bad = [t for t in token_ids if not 0 <= t < self.model.n_vocab]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is not in the vocabulary", param=param)

    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        self._refuse_if_embedding_only()
        if self.template is None:
            raise ModelLoading("the model is not loaded yet", retry_after=5)
        return self.template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    @property
    def capabilities(self) -> Capabilities:
        if self.embedding_only:
            return Capabilities(sampling=frozenset(), max_context=self.embedder.n_ctx if self.embedder else 0,
                                chat_template=False)
        return Capabilities(sampling=SAMPLING, max_context=self.ctx.n_ctx_seq if self.ctx else 0,
                            special_tokens=self._special_tokens, max_token_chars=self._max_token_chars,
                            tool_format=self.template.tool_format.name if self.template else None,
                            constraints=KINDS | {"trigger"}, vocab_size=self.model.n_vocab if self.model else 0)

    def stats(self) -> EngineStats:
        s = self.scheduler
        if s is None:
            return EngineStats(loaded=self.embedding_only and self.model is not None)
        return EngineStats(loaded=True, running=s.n_running, waiting=s.n_waiting, last_progress=s.last_progress)

