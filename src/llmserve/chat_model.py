"""The in-process API. ``AsyncChatModel`` is the real code; ``ChatModel`` is its sync facade."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
import uuid
from contextlib import aclosing
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TypeVar

from llmserve import sampling_defaults
from llmserve.content_text import ContentEscaper
from llmserve.engines import create_engine
from llmserve.engines.base import Engine
from llmserve.errors import ContextLengthExceeded, EngineStalled, InvalidRequest, ModelLoading, UnsupportedParameter
from llmserve.fanout import fan_out
from llmserve.sampling_defaults import SamplingDefaults
from llmserve.settings import ModelSettings
from llmserve.stops import StopMatcher
from llmserve.types import (
    Completion,
    Constraint,
    Delta,
    FinishReason,
    GenerationRequest,
    Message,
    SamplingParams,
    Usage,
)
from llmserve.workpool import WorkPool

logger = logging.getLogger(__name__)
MessagesLike = str | Sequence[Message | dict[str, Any]]
T = TypeVar("T")
# SamplingParams fields a client sets under another name
_WIRE_NAMES = {"prompt_logprobs": "echo"}


def to_messages(messages: MessagesLike) -> list[Message]:
    if isinstance(messages, str):
        return [Message("user", messages)]
    out = []
    for m in messages:
        if isinstance(m, Message):
            out.append(m)
        else:
            try:
                out.append(Message(str(m["role"]), str(m["content"])))
            except KeyError as exc:
                raise InvalidRequest(f"message is missing {exc.args[0]!r}", param="messages") from None
    if not out:
        raise InvalidRequest("messages must not be empty", param="messages")
    return out


class AsyncChatModel:
    """One model: chat template, context checks, stop strings, over any engine."""

    adapter: str | None = None  # the LoRA adapter its requests generate under (see AdapterModel)
    parent: str | None = None  # an adapter's base model name

    def __init__(
        self,
        model: str | None = None,
        *,
        engine: str | Engine = "llamacpp",
        settings: ModelSettings | None = None,
        **overrides: Any,
    ):
        """``model`` is a GGUF file or HF directory (default: the bundled model); ``engine`` an
        engine name or a ready ``Engine``; other keywords are ``ModelSettings`` fields."""
        if settings is None:
            name = engine if isinstance(engine, str) else "fake"
            settings = ModelSettings(path=model, engine=name, **overrides)
        self.settings = settings
        self.engine = engine if isinstance(engine, Engine) else create_engine(settings)
        self.name = self.settings.served_name()
        self.pool: WorkPool | None = None  # the server's pool for CPU work (None: the loop's default executor)
        self._escaper: ContentEscaper | None = None
        # what a request's unset sampling parameters become (settings, the model's own, built-ins)
        self.sampling_defaults: SamplingDefaults = sampling_defaults.for_model(self.settings)
        self._started = False
        self._watchdog: asyncio.Task | None = None
        self._waiters: set[asyncio.Task] = set()  # tasks waiting on the engine for a delta
        self._stall_cancelled: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.engine.start()
        if not self.settings.allow_special_tokens_in_content:
            self._escaper = ContentEscaper(self.engine.capabilities.special_tokens)
        self._watchdog = asyncio.create_task(self._watch(), name=f"watchdog-{self.name}")
        self._started = True

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        if self._started:
            self._started = False
            await self.engine.stop()

    async def __aenter__(self) -> AsyncChatModel:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    @property
    def ready(self) -> bool:
        return self._started

    # -- building requests -------------------------------------------------------------------
    def check_sampling(self, sampling: SamplingParams) -> None:
        supported = self.engine.capabilities.sampling
        if not supported:  # an engine that cannot generate (an embedding model)
            raise InvalidRequest(f"model {self.name!r} serves embeddings only", param="model")
        # a value at its neutral default, or at this model's own default, is not a request for it
        neutral, own = SamplingParams(), self.sampling_defaults.values
        for f in dataclasses.fields(SamplingParams):
            value = getattr(sampling, f.name)
            defaulted = value == getattr(neutral, f.name) or (f.name in own and value == own[f.name])
            if f.name not in supported and not defaulted:
                what = "echo with logprobs" if f.name == "prompt_logprobs" else f.name
                raise UnsupportedParameter(f"{what} is not supported by the {self.settings.engine} engine",
                                           param=_WIRE_NAMES.get(f.name, f.name))
        n_vocab = self.engine.capabilities.vocab_size
        bad = [t for t, _ in sampling.logit_bias if not 0 <= t < n_vocab] if n_vocab else []
        if bad:
            raise InvalidRequest(f"logit_bias: token id {bad[0]} is not in the vocabulary (0..{n_vocab - 1})",
                                 param="logit_bias")

    @property
    def content_is_text(self) -> bool:
        """Special-token strings in message content are tokenized as text (the default; off with
        ``allow_special_tokens_in_content``)."""
        return self._escaper is not None

    def check_constraint(self, constraint: Constraint | None, param: str = "response_format") -> None:
        if constraint is None:
            return
        honoured = self.engine.capabilities.constraints
        if constraint.kind not in honoured:
            raise UnsupportedParameter(
                f"{param}: {constraint.kind} output is not supported by the {self.settings.engine} engine", param=param)
        if constraint.trigger is not None and "trigger" not in honoured:
            raise UnsupportedParameter(
                f"{param}: lazy (triggered) constraints are not supported by the {self.settings.engine} engine",
                param=param)

    def render(self, messages: MessagesLike, *, add_generation_prompt: bool = True,
               tools: Sequence[dict[str, Any]] | None = None) -> str:
        """The prompt for ``messages``, to pass to ``build_request``; ``tools`` (OpenAI tool
        objects) are shown to the model (see ``structured.tools``). Special-token strings inside
        the messages appear as private markers there, which ``build_request`` tokenizes as plain
        text; ``display`` spells them back."""
        if tools and self.engine.capabilities.tool_format is None:
            raise UnsupportedParameter(f"tools are not supported by the {self.settings.engine} engine", param="tools")
        msgs = to_messages(messages)
        if self._escaper is not None:
            msgs = self._escaper.escape(msgs).messages
            tools = self._escaper.escape_value(tools) if tools else tools  # descriptions are client text too
        if tools:
            return self.engine.render_chat(msgs, add_generation_prompt=add_generation_prompt, tools=tools)
        return self.engine.render_chat(msgs, add_generation_prompt=add_generation_prompt)

    def display(self, prompt: str) -> str:
        """A ``render``ed prompt as the user's characters spell it."""
        return self._escaper.unescape(prompt) if self._escaper is not None else prompt

    def tokenize_prompt(self, prompt: str, *, add_special: bool = False) -> list[int]:
        """Token ids of a ``render``ed prompt (or of any prompt text: control tokens parsed)."""
        # JSON may carry lone surrogates ("\ud800"), which no tokenizer can encode
        prompt = prompt.encode("utf-8", "replace").decode("utf-8")
        if self._escaper is None or "\ue000" not in prompt:
            return self.engine.tokenize(prompt, add_special=add_special)
        first = [add_special]  # BOS, when asked for, only before the first piece

        def tokenize(text: str, special: bool) -> list[int]:
            ids = self.engine.tokenize(text, add_special=first[0], parse_special=special)
            first[0] = False
            return ids

        return self._escaper.tokenize(prompt, tokenize)

    def check_fits(self, messages: Sequence[Message], sampling: SamplingParams) -> None:
        """Refuses at once what cannot fit the context, before rendering or tokenizing it: every
        message takes a token at least, and a token stands for at most ``max_token_chars``."""
        caps = self.engine.capabilities
        reserve = sampling.max_tokens or 1
        least = len(messages)
        if caps.max_token_chars:
            chars = sum(len(m.content) + sum(len(c.arguments) for c in m.tool_calls) for m in messages)
            least = max(least, -(-chars // caps.max_token_chars))
        if least + reserve > caps.max_context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {caps.max_context} tokens. However, you "
                f"requested at least {least + reserve} tokens (your {len(messages)} messages need at "
                f"least {least}, {reserve} in the completion). Please reduce the length of the "
                "messages or completion.",
                param="messages",
            )

    def prepare(self, messages: MessagesLike, sampling: SamplingParams, request_id: str | None = None,
                constraint: Constraint | None = None, **render: Any) -> GenerationRequest:
        """Checks, renders and tokenizes a chat: CPU work, run it with ``aprepare`` on a server."""
        if not self._started:
            raise ModelLoading(f"model {self.name!r} is still loading", retry_after=5)
        msgs = to_messages(messages)
        self.check_sampling(sampling)
        self.check_constraint(constraint)
        self.check_fits(msgs, sampling)
        return self.build_request(self.render(msgs, **render), sampling, request_id, constraint)

    async def aprepare(self, messages: MessagesLike, sampling: SamplingParams, request_id: str | None = None,
                       constraint: Constraint | None = None, **render: Any) -> GenerationRequest:
        """``prepare`` off the event loop, in the server's bounded pool: a request that is costly
        to render or tokenize never stalls the streams of others."""
        return await self.run_blocking(self.prepare, messages, sampling, request_id, constraint, **render)

    async def run_blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in the server's pool for CPU work (the loop's default executor without one)."""
        if self.pool is not None:
            return await self.pool.run(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def build_request(
        self, prompt: str | Sequence[int], sampling: SamplingParams, request_id: str | None = None,
        constraint: Constraint | None = None,
    ) -> GenerationRequest:
        """``constraint``: structured output; the engine compiles it when the generation starts
        (a grammar that cannot compile is an InvalidRequest at the stream's first step)."""
        if not self._started:
            raise ModelLoading(f"model {self.name!r} is still loading", retry_after=5)
        self.check_sampling(sampling)
        self.check_constraint(constraint)
        tokens = tuple(self.tokenize_prompt(prompt)) if isinstance(prompt, str) else tuple(prompt)
        if not tokens:
            raise InvalidRequest("the prompt is empty", param="messages")
        limit = self.engine.capabilities.max_context
        wanted = len(tokens) + (sampling.max_tokens or 1)
        if wanted > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{wanted} tokens ({len(tokens)} in the messages, {wanted - len(tokens)} in the "
                "completion). Please reduce the length of the messages or completion.",
                param="messages",
            )
        return GenerationRequest(request_id or f"req-{uuid.uuid4().hex}", tokens, sampling, constraint,
                                 adapter=self.adapter)

    # -- the watchdog ----------------------------------------------------------------------------
    def stalled_for(self) -> float:
        """Seconds the engine has had work without making progress (0: fine, or it cannot tell)."""
        stats = self.engine.stats()
        if stats.last_progress is None or not (stats.running or stats.waiting):
            return 0.0
        return max(0.0, time.monotonic() - stats.last_progress)

    @property
    def stalled(self) -> bool:
        return self.stalled_for() > self.settings.watchdog_timeout

    async def _watch(self) -> None:
        """Fails the requests waiting on a stalled engine (503 engine_stalled) instead of
        leaving them hanging; /health reports the stall."""
        interval = min(1.0, self.settings.watchdog_timeout / 4)
        reported = False
        while True:
            await asyncio.sleep(interval)
            if not self.stalled:
                reported = False
                continue
            if not reported:
                logger.error("engine of %s made no progress for %.0f s with work in flight: failing its requests",
                             self.name, self.stalled_for())
                reported = True
            for task in list(self._waiters):
                self._stall_cancelled.add(task)
                task.cancel()

    async def _next_delta(self, stream: AsyncIterator[Delta]) -> Delta | None:
        task = asyncio.current_task()
        self._waiters.add(task)
        try:
            return await anext(stream, None)
        except asyncio.CancelledError:
            if task not in self._stall_cancelled:
                raise
            if hasattr(task, "uncancel"):
                task.uncancel()
            raise EngineStalled(f"the engine made no progress for {self.settings.watchdog_timeout:g}s",
                                retry_after=5) from None
        finally:
            self._waiters.discard(task)
            self._stall_cancelled.discard(task)

    def fan_out(self, request: GenerationRequest, n: int) -> list[GenerationRequest]:
        """The ``n`` engine requests of one call with ``n`` choices (see ``llmserve.fanout``).
        ``n`` beyond the engine's slots could never run together: InvalidRequest."""
        if n > self.settings.slots():
            raise InvalidRequest(f"n is {n}, but model {self.name!r} runs at most {self.settings.slots()} "
                                 "sequences at once (--parallel)", param="n")
        return fan_out(request, n)

    # -- generation ----------------------------------------------------------------------------
    async def agenerate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Engine deltas with stop strings applied. Closing this iterator aborts the request."""
        matcher = StopMatcher(request.sampling.stop)
        stream = self.engine.generate(request)
        n_generated = 0
        try:
            while (delta := await self._next_delta(stream)) is not None:
                n_generated += len(delta.token_ids)
                text, hit = matcher.feed(delta.text)
                if hit:
                    usage = delta.usage or Usage(len(request.prompt_tokens), n_generated)
                    yield dataclasses.replace(delta, text=text, finish_reason=FinishReason.STOP, usage=usage)
                    return
                if delta.finish_reason is not None:
                    text += matcher.flush()
                yield dataclasses.replace(delta, text=text)
        finally:
            await stream.aclose()

    async def astream_deltas(
        self, messages: MessagesLike, request_id: str | None = None, *, constraint: Constraint | None = None,
        **sampling: Any
    ) -> AsyncIterator[Delta]:
        """``constraint``: structured output (``Constraint("json_schema", schema_text)``, ...)."""
        request = await self.aprepare(messages, self.sampling_defaults.resolve(sampling), request_id, constraint)
        async with aclosing(self.agenerate(request)) as deltas:  # closing aborts in the engine
            async for delta in deltas:
                yield delta

    async def astream_chat(self, messages: MessagesLike, **sampling: Any) -> AsyncIterator[str]:
        async with aclosing(self.astream_deltas(messages, **sampling)) as deltas:
            async for delta in deltas:
                if delta.text:
                    yield delta.text

    async def achat(self, messages: MessagesLike, **sampling: Any) -> Completion:
        parts: list[str] = []
        last = Delta()
        async with aclosing(self.astream_deltas(messages, **sampling)) as deltas:
            async for delta in deltas:
                parts.append(delta.text)
                last = delta
        return Completion("".join(parts), last.finish_reason or FinishReason.STOP, last.usage or Usage())


class ChatModel:
    """Sync facade: every call runs on one private event-loop thread, safe from many threads."""

    def __init__(
        self,
        model: str | None = None,
        *,
        engine: str | Engine = "llamacpp",
        settings: ModelSettings | None = None,
        **overrides: Any,
    ):
        """Same arguments as ``AsyncChatModel``; loads the model before returning."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llmserve-chat-model", daemon=True)
        self._thread.start()
        self._model = AsyncChatModel(model, engine=engine, settings=settings, **overrides)
        try:
            self._call(self._model.start())
        except BaseException:
            self.close()
            raise

    @property
    def name(self) -> str:
        return self._model.name

    @property
    def engine(self) -> Engine:
        return self._model.engine

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        """What the sampling keywords of ``chat`` / ``stream_chat`` default to for this model."""
        return self._model.sampling_defaults

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def chat(self, messages: MessagesLike, **sampling: Any) -> Completion:
        return self._call(self._model.achat(messages, **sampling))

    def stream_chat(self, messages: MessagesLike, **sampling: Any) -> Iterator[str]:
        agen = self._model.astream_chat(messages, **sampling)
        try:
            while True:
                try:
                    yield self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._call(agen.aclose())

    async def achat(self, messages: MessagesLike, **sampling: Any) -> Completion:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._model.achat(messages, **sampling), self._loop))

    async def astream_chat(self, messages: MessagesLike, **sampling: Any) -> AsyncIterator[str]:
        agen = self._model.astream_chat(messages, **sampling)
        try:
            while True:
                try:
                    yield await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(agen.__anext__(), self._loop))
                except StopAsyncIteration:
                    return
        finally:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(agen.aclose(), self._loop))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if getattr(self, "_model", None) is not None:
            self._call(self._model.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> ChatModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
