"""Embeddings over llama.cpp: a context of its own, on a thread of its own.

The decode loop's context is never touched: this one is created with ``embeddings = true``
and a pooling type (the model's own for embedding models, mean for a causal LM), lazily on
first use, and only ever used from the embedder's single worker thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import llama_cpp as ll

from llmserve.engines.base import Embedder
from llmserve.engines.llamacpp.model import LlamaModel
from llmserve.errors import ContextLengthExceeded, EngineError, InvalidRequest
from llmserve.types import Embeddings

logger = logging.getLogger(__name__)

POOLING = {"mean": ll.LLAMA_POOLING_TYPE_MEAN, "cls": ll.LLAMA_POOLING_TYPE_CLS, "last": ll.LLAMA_POOLING_TYPE_LAST}
MAX_SEQS = 16  # inputs decoded together in one batch


def model_pooling(model: LlamaModel) -> int | None:
    """The pooling type an embedding GGUF declares (``<arch>.pooling_type``), None for a plain LM."""
    arch = model.metadata.get("general.architecture", "")
    value = model.metadata.get(f"{arch}.pooling_type")
    return int(value) if value and value.isdigit() and int(value) != ll.LLAMA_POOLING_TYPE_NONE else None


class LlamaEmbedder(Embedder):
    def __init__(self, model: LlamaModel, *, n_ctx: int, n_threads: int, pooling: str | None = None,
                 normalize: bool = True):
        if pooling is not None and pooling not in POOLING:
            raise InvalidRequest(f"pooling must be one of {', '.join(POOLING)}", param="pooling")
        self.model = model
        declared = model_pooling(model)
        self.pooling = POOLING[pooling] if pooling else declared if declared is not None else POOLING["mean"]
        self.n_ctx = min(n_ctx, model.n_ctx_train) if model.n_ctx_train > 0 else n_ctx
        self.n_threads = n_threads
        self.normalize = normalize
        self.dimensions = ll.llama_model_n_embd(model.ptr)
        self._encoder_only = ll.llama_model_has_encoder(model.ptr) and not ll.llama_model_has_decoder(model.ptr)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmserve-embed")
        self._ctx = None
        self._batch = None

    async def aembed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._embed, list(inputs))

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._free)
        self._executor.shutdown(wait=True)

    # -- the embedder thread ------------------------------------------------------------------
    def _open(self) -> None:
        params = ll.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = params.n_ubatch = self.n_ctx  # a whole input must fit one micro-batch
        params.n_seq_max = MAX_SEQS
        params.kv_unified = True  # any one input may use the whole context
        params.n_threads = params.n_threads_batch = self.n_threads
        params.embeddings = True
        params.pooling_type = self.pooling
        params.no_perf = True
        self._ctx = ll.llama_init_from_model(self.model.ptr, params)
        if not self._ctx:
            raise EngineError("llama.cpp could not create the embeddings context (out of memory?)")
        self._batch = ll.llama_batch_init(self.n_ctx, 0, MAX_SEQS)
        logger.info("embeddings context ready: %d tokens, pooling %d, %d dimensions",
                    self.n_ctx, self.pooling, self.dimensions)

    def _free(self) -> None:
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            ll.llama_free(self._ctx)
            self._ctx = None

    def _tokens(self, item: str | Sequence[int]) -> list[int]:
        tokens = self.model.tokenize(item, add_special=True) if isinstance(item, str) else list(item)
        if not tokens:
            raise InvalidRequest("input must not be empty", param="input")
        bad = [t for t in tokens if not 0 <= t < self.model.n_vocab]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is not in the vocabulary", param="input")
        if len(tokens) > self.n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length for embeddings is {self.n_ctx} tokens, "
                f"however you requested {len(tokens)} tokens in the input.", param="input")
        return tokens

    def _embed(self, inputs: list[str | Sequence[int]]) -> Embeddings:
        token_lists = [self._tokens(item) for item in inputs]
        if self._ctx is None:
            self._open()
        vectors: list[list[float]] = []
        group: list[list[int]] = []
        for tokens in token_lists:
            if group and (sum(map(len, group)) + len(tokens) > self.n_ctx or len(group) >= MAX_SEQS):
                vectors.extend(self._run(group))
                group = []
            group.append(tokens)
        if group:
            vectors.extend(self._run(group))
        return Embeddings(vectors, sum(map(len, token_lists)))

    def _run(self, group: list[list[int]]) -> list[list[float]]:
        batch, n = self._batch, 0
        for seq_id, tokens in enumerate(group):
            for pos, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = True  # every token is an output in embeddings mode
                n += 1
        batch.n_tokens = n
        ll.llama_memory_clear(ll.llama_get_memory(self._ctx), True)
        rc = (ll.llama_encode if self._encoder_only else ll.llama_decode)(self._ctx, batch)
        if rc != 0:
            raise EngineError(f"llama.cpp failed to compute embeddings ({rc})")
        out = []
        for seq_id in range(len(group)):
            ptr = ll.llama_get_embeddings_seq(self._ctx, seq_id)
            if not ptr:
                raise EngineError("llama.cpp returned no pooled embedding")
            vector = list(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))[: self.dimensions])
            out.append(_unit(vector) if self.normalize else vector)
        return out


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector
