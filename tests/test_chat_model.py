"""The in-process API: ChatModel (sync facade) and AsyncChatModel, fake and real engines."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmserve import AsyncChatModel, ChatModel, ContextLengthExceeded, InvalidRequest
from llmserve.errors import UnsupportedParameter
from llmserve.types import FinishReason
from tests.conftest import THREADS


@pytest.fixture
def fake_chat():
    with ChatModel(engine="fake", name="f", options={"token_delay": 0.001}) as m:
        yield m


def test_chat_returns_response(fake_chat):
    r = fake_chat.chat([{"role": "user", "content": "good morning"}], temperature=0)
    assert r.text == "good morning"
    assert r.finish_reason is FinishReason.STOP
    assert r.usage.completion_tokens == 3 and r.usage.prompt_tokens > 0


def test_stream_chat_yields_pieces(fake_chat):
    assert list(fake_chat.stream_chat("one two three", temperature=0)) == ["one", " two", " three"]


def test_stream_chat_stop_and_max_tokens(fake_chat):
    assert "".join(fake_chat.stream_chat("one two three", temperature=0, stop="two")) == "one "
    assert fake_chat.chat("one two three", temperature=0, max_tokens=2).finish_reason is FinishReason.LENGTH


def test_sync_api_from_many_threads(fake_chat):
    loop_threads = set()

    def ask(i: int) -> str:
        return fake_chat.chat(f"number {i}", temperature=0).text

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(32)))
    assert answers == [f"number {i}" for i in range(32)]
    # all of it ran on the one private loop thread
    names = {t.name for t in threading.enumerate()}
    assert sum(1 for n in names if n == "llmserve-chat-model") == 1
    del loop_threads


def test_abandoning_a_stream_aborts_it(fake_chat):
    stream = fake_chat.stream_chat("a b c d e f g h i j", temperature=0)
    assert next(stream) == "a"
    stream.close()
    assert fake_chat.engine.stats().running == 0


def test_errors_are_llmserve_errors(fake_chat):
    with pytest.raises(InvalidRequest):
        fake_chat.chat([])
    with pytest.raises(ContextLengthExceeded):
        fake_chat.chat("x", max_tokens=10_000)


async def test_achat_and_astream_chat_on_the_sync_facade(fake_chat):
    r = await fake_chat.achat("hello async", temperature=0)
    assert r.text == "hello async"
    assert [p async for p in fake_chat.astream_chat("a b", temperature=0)] == ["a", " b"]


async def test_async_chat_model_directly():
    async with AsyncChatModel(engine="fake", name="f") as m:
        r = await m.achat("direct call", temperature=0)
        assert r.text == "direct call"
        pieces = [p async for p in m.astream_chat("x y z", temperature=0)]
        assert pieces == ["x", " y", " z"]
        results = await asyncio.gather(*(m.achat(f"q{i}", temperature=0) for i in range(10)))
        assert [r.text for r in results] == [f"q{i}" for i in range(10)]


def test_unsupported_sampling_is_rejected():
    from llmserve.engines.fake import FakeEngine
    from llmserve.settings import ModelSettings
    from llmserve.types import Capabilities

    class Limited(FakeEngine):
        @property
        def capabilities(self) -> Capabilities:
            return Capabilities(sampling=frozenset({"temperature", "max_tokens", "stop"}), max_context=100)

    with ChatModel(engine=Limited(ModelSettings(engine="fake"))) as m:
        assert m.chat("ok", temperature=0).text == "ok"
        with pytest.raises(UnsupportedParameter) as info:
            m.chat("no", top_k=5)
        assert info.value.param == "top_k"


def test_real_model_chat_and_stream():
    with ChatModel(threads=THREADS, parallel=2, ctx_size=2048) as m:
        r = m.chat([{"role": "user", "content": "What is the capital of France? Answer in one word."}], temperature=0)
        assert "Paris" in r.text
        pieces = list(m.stream_chat("What is 2+2?", temperature=0, max_tokens=16))
        assert len(pieces) > 1
        assert "4" in "".join(pieces)
