"""The in-process API. ``AsyncChatModel`` is the real code; ``ChatModel`` is its sync facade."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid
from contextlib import aclosing
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from llmserve.engines import create_engine
from llmserve.engines.base import Engine
from llmserve.errors import ContextLengthExceeded, InvalidRequest, ModelLoading, UnsupportedParameter
from llmserve.fanout import fan_out
from llmserve.settings import ModelSettings
from llmserve.stops import StopMatcher
from llmserve.types import Completion, Delta, FinishReason, GenerationRequest, Message, SamplingParams, Usage

MessagesLike = str | Sequence[Message | dict[str, Any]]
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
        self._started = False

    async def start(self) -> None:
        await self.engine.start()
        self._started = True

    async def aclose(self) -> None:
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
        defaults = SamplingParams()
        for f in dataclasses.fields(SamplingParams):
            if f.name not in supported and getattr(sampling, f.name) != getattr(defaults, f.name):
                what = "echo with logprobs" if f.name == "prompt_logprobs" else f.name
                raise UnsupportedParameter(f"{what} is not supported by the {self.settings.engine} engine",
                                           param=_WIRE_NAMES.get(f.name, f.name))
        n_vocab = self.engine.capabilities.vocab_size
        bad = [t for t, _ in sampling.logit_bias if not 0 <= t < n_vocab] if n_vocab else []
        if bad:
            raise InvalidRequest(f"logit_bias: token id {bad[0]} is not in the vocabulary (0..{n_vocab - 1})",
                                 param="logit_bias")

    def render(self, messages: MessagesLike) -> str:
        return self.engine.render_chat(to_messages(messages))

    def build_request(
        self, prompt: str | Sequence[int], sampling: SamplingParams, request_id: str | None = None
    ) -> GenerationRequest:
        if not self._started:
            raise ModelLoading(f"model {self.name!r} is still loading", retry_after=5)
        self.check_sampling(sampling)
        if isinstance(prompt, str):
            # JSON may carry lone surrogates ("\ud800"), which no tokenizer can encode
            tokens = tuple(self.engine.tokenize(prompt.encode("utf-8", "replace").decode("utf-8")))
        else:
            tokens = tuple(prompt)
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
        return GenerationRequest(request_id or f"req-{uuid.uuid4().hex}", tokens, sampling)

    def build_requests(
        self, prompt: str | Sequence[int], sampling: SamplingParams, request_id: str | None = None, *, n: int = 1
    ) -> list[GenerationRequest]:
        """The ``n`` engine requests of one call with ``n`` choices (see ``llmserve.fanout``).
        ``n`` beyond the engine's slots could never run together: InvalidRequest."""
        if n > self.settings.parallel:
            raise InvalidRequest(f"n is {n}, but model {self.name!r} runs at most {self.settings.parallel} "
                                 "sequences at once (--parallel)", param="n")
        return fan_out(self.build_request(prompt, sampling, request_id), n)

    # -- generation ----------------------------------------------------------------------------
    async def agenerate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Engine deltas with stop strings applied. Closing this iterator aborts the request."""
        matcher = StopMatcher(request.sampling.stop)
        stream = self.engine.generate(request)
        n_generated = 0
        try:
            async for delta in stream:
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
        self, messages: MessagesLike, request_id: str | None = None, **sampling: Any
    ) -> AsyncIterator[Delta]:
        request = self.build_request(self.render(messages), SamplingParams(**_sampling(sampling)), request_id)
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


def _sampling(kw: dict[str, Any]) -> dict[str, Any]:
    if "stop" in kw:
        stop = kw["stop"]
        kw = {**kw, "stop": (stop,) if isinstance(stop, str) else tuple(stop or ())}
    return kw


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
