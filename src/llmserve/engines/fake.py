"""A scripted engine for tests: word tokens, optional delays, injected failures.

Options (``ModelSettings.options``): ``reply`` (greedy answer; default echoes the last user
message), ``token_delay`` (seconds per token), ``fail_after`` (raise EngineError after N tokens),
``max_context`` (tokens, default 2048). It honours ``parallel``, ``max_queue`` and
``queue_timeout`` like a real engine, so admission can be tested in milliseconds.
Logprobs are made up but well formed: token ``i`` of an answer has logprob ``-0.25 * (i % 4)``
and its alternatives follow, each 1.0 lower. ``logit_bias`` 100 makes the answer that token
repeated; -100 drops the token from the answer.

Fault injection, aimed at the requests whose prompt contains a marker text: ``fail_prefill_on``
(the request fails in its prefill, before any token), ``fail_decode_on`` (it fails after two
tokens), with ``fault_error`` ``engine`` (an ``EngineError``, default) or ``runtime`` (a bare
``RuntimeError``, as a bug would raise); ``hang_on`` (that request's decode step never ends, and
as in a batched engine every running request stops with it, until the engine is stopped).

Tokens are words of at most 32 characters (``<|im_start|>`` and ``<|im_end|>`` are special).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llmserve.chat_template import ChatTemplate
from llmserve.engines.base import Embedder, Engine
from llmserve.errors import EngineError, InvalidRequest, Overloaded, QueueTimeout
from llmserve.settings import ModelSettings
from llmserve.types import (
    ALL_SAMPLING,
    Capabilities,
    Delta,
    Embeddings,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Message,
    TokenLogprob,
    Usage,
)

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_WORDS = re.compile(r"<\|[a-z_]+\|>|\s{0,8}[^\s<]{1,24}|\s{1,32}|<")
_TEXT_WORDS = re.compile(r"\s{0,8}[^\s<]{1,24}|\s{1,32}|<")  # special-token parsing off
SPECIAL = frozenset({"<|im_start|>", "<|im_end|>"})
_RANDOM_WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")
EOS = "<|im_end|>"


class FakeEngine(Engine):
    def __init__(self, settings: ModelSettings):
        self.settings = settings
        opts = settings.options
        self.reply: str | None = opts.get("reply")
        self.token_delay = float(opts.get("token_delay", 0.0))
        self.fail_after: int | None = opts.get("fail_after")
        self.max_context = int(opts.get("max_context", 2048))
        self.faults = {k: opts[k] for k in ("fail_prefill_on", "fail_decode_on", "hang_on") if opts.get(k)}
        self.fault_error = str(opts.get("fault_error", "engine"))
        self._progressing = asyncio.Event()  # cleared while a hung step holds the engine
        self._progressing.set()
        self.last_progress = time.monotonic()
        self._template = ChatTemplate(CHATML, eos_token=EOS)
        self._vocab: dict[str, int] = {EOS: 0}
        self._words: list[str] = [EOS]
        self._running: set[str] = set()
        self._waiting = 0
        self._slots: asyncio.Semaphore | None = None
        self._aborted: set[str] = set()
        self.embedder = FakeEmbedder(self)

    async def start(self) -> None:
        await asyncio.sleep(float(self.settings.options.get("load_delay", 0.0)))
        self._slots = asyncio.Semaphore(self.settings.slots())

    async def stop(self) -> None:
        self._aborted.update(self._running)
        self._progressing.set()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            sampling=ALL_SAMPLING,
            max_context=self.max_context,
            special_tokens=SPECIAL,
            max_token_chars=32,
            tool_format=self._template.tool_format.name,
        )

    def stats(self) -> EngineStats:
        return EngineStats(loaded=self._slots is not None, running=len(self._running), waiting=self._waiting,
                           last_progress=self.last_progress)

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        ids = []
        for word in (_WORDS if parse_special else _TEXT_WORDS).findall(text):
            if word not in self._vocab:
                self._vocab[word] = len(self._words)
                self._words.append(word)
            ids.append(self._vocab[word])
        return ids

    def detokenize(self, token_ids: Sequence[int]) -> str:
        bad = [i for i in token_ids if not 0 <= i < len(self._words)]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is not in the vocabulary", param="tokens")
        return "".join(self._words[i] for i in token_ids)

    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    tools: Sequence[dict[str, Any]] | None = None) -> str:
        return self._template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    async def abort(self, request_id: str) -> None:
        self._aborted.add(request_id)

    def _answer(self, request: GenerationRequest) -> list[int]:
        if request.sampling.greedy or self.reply is not None:
            text = self.reply if self.reply is not None else self._last_user(request)
            return self.tokenize(text, parse_special=False) + [0]
        rng = random.Random(request.sampling.seed)
        n = rng.randint(3, 12)
        return self.tokenize("".join(" " + rng.choice(_RANDOM_WORDS) for _ in range(n)).strip()) + [0]

    def _last_user(self, request: GenerationRequest) -> str:
        """The content of the last user turn, found by control tokens (as a model reads turns)."""
        ids = list(request.prompt_tokens)
        opener = self.tokenize("<|im_start|>user")
        starts = [i for i in range(len(ids)) if ids[i:i + len(opener)] == opener]
        if not starts:
            return self.detokenize(ids)
        turn = ids[starts[-1] + len(opener):]
        return self.detokenize(turn[:turn.index(0)] if 0 in turn else turn).removeprefix("\n")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        assert self._slots is not None, "engine not started"
        if self._slots.locked() and self._waiting >= self.settings.max_queue:
            raise Overloaded("the request queue is full; try again shortly", retry_after=1)
        if not self._running and not self._waiting:
            self.last_progress = time.monotonic()  # work comes to an idle engine
        self._waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.settings.queue_timeout)
        except asyncio.TimeoutError:
            raise QueueTimeout(f"waited {self.settings.queue_timeout}s for a free slot", retry_after=1) from None
        finally:
            self._waiting -= 1
        request.timing.started_at = time.monotonic()
        self._running.add(request.request_id)
        try:
            fault = self._fault_for(request)
            if fault == "fail_prefill_on":
                self._fail("prefill")
            async for delta in self._decode(request, fault):
                yield delta
        finally:
            if self._progressing.is_set():  # a hung step never returns: its requests stay in it
                self._running.discard(request.request_id)
                self._aborted.discard(request.request_id)
                self._slots.release()

    def _fault_for(self, request: GenerationRequest) -> str | None:
        if not self.faults:
            return None
        prompt = self.detokenize(request.prompt_tokens)
        return next((kind for kind, marker in self.faults.items() if marker in prompt), None)

    def _fail(self, phase: str) -> None:
        if self.fault_error == "runtime":
            raise RuntimeError(f"injected bug at {phase}")
        raise EngineError(f"injected failure at {phase}")

    def _biased(self, request: GenerationRequest, answer: list[int]) -> list[int]:
        bias = dict(request.sampling.logit_bias)
        forced = [t for t, b in bias.items() if b >= 100]
        if forced:
            return [forced[0]] * (request.sampling.max_tokens or 16) + [0]
        return [t for t in answer if bias.get(t, 0) > -100]

    def _record(self, token: int, i: int, k: int | None) -> TokenLogprob:
        lp = -0.25 * (i % 4)
        alternatives = [token] + [t for t in range(len(self._words)) if t != token]
        top = tuple(TokenLogprob(t, self._words[t].encode(), lp - j) for j, t in enumerate(alternatives[:k or 0]))
        return TokenLogprob(token, self._words[token].encode(), lp, top)

    def _with_logprobs(self, request: GenerationRequest, delta: Delta, i: int) -> Delta:
        k, pk = request.sampling.logprobs, request.sampling.prompt_logprobs
        if k is not None and delta.text:
            delta = dataclasses.replace(delta, logprobs=(self._record(delta.token_ids[0], i, k),))
        if pk is not None and i == 0:
            prompt = request.prompt_tokens
            delta = dataclasses.replace(delta, prompt_logprobs=(None,) + tuple(
                self._record(t, j, pk) for j, t in enumerate(prompt[1:])))
        return delta

    async def _decode(self, request: GenerationRequest, fault: str | None = None) -> AsyncIterator[Delta]:
        async for i, delta in _enumerate(self._decode_plain(request, fault)):
            yield self._with_logprobs(request, delta, i)

    async def _decode_plain(self, request: GenerationRequest, fault: str | None = None) -> AsyncIterator[Delta]:
        answer = self._biased(request, self._answer(request))
        n_prompt = len(request.prompt_tokens)
        budget = min(request.sampling.max_tokens or self.max_context, self.max_context - n_prompt)
        if request.sampling.ignore_eos:  # the answer again and again, to the budget
            words = [t for t in answer if t != 0] or [0]
            answer = [words[i % len(words)] for i in range(budget)]
        for i, token in enumerate(answer):
            if request.request_id in self._aborted:
                return
            if self.fail_after is not None and i >= self.fail_after:
                raise EngineError("injected failure")
            if fault == "fail_decode_on" and i >= 2:
                self._fail("decode")
            if fault == "hang_on" and i >= 1:
                self._progressing.clear()  # this step never ends: the whole engine stops
            await self._progressing.wait()
            await asyncio.sleep(self.token_delay)
            self.last_progress = time.monotonic()
            if token == 0:
                yield Delta("", (token,), FinishReason.STOP, Usage(n_prompt, i + 1))
                return
            last = i + 1 >= budget
            yield Delta(
                self._words[token], (token,),
                FinishReason.LENGTH if last else None,
                Usage(n_prompt, i + 1) if last else None,
            )
            if last:
                return


async def _enumerate(it: AsyncIterator[Delta]) -> AsyncIterator[tuple[int, Delta]]:
    i = 0
    async for item in it:
        yield i, item
        i += 1


class FakeEmbedder(Embedder):
    """Bag-of-words vectors: equal texts embed equally, texts sharing words point alike."""

    dimensions = 16

    def __init__(self, engine: FakeEngine):
        self.engine = engine

    async def aembed(self, inputs: Sequence[str | Sequence[int]]) -> Embeddings:
        vectors, n_tokens = [], 0
        for item in inputs:
            tokens = self.engine.tokenize(item) if isinstance(item, str) else list(item)
            if not tokens:
                raise InvalidRequest("input must not be empty", param="input")
            n_tokens += len(tokens)
            vector = [0.0] * self.dimensions
            for token in tokens:
                vector[token % self.dimensions] += 1.0
            norm = sum(x * x for x in vector) ** 0.5
            vectors.append([x / norm for x in vector])
        return Embeddings(vectors, n_tokens)
