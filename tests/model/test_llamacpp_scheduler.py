"""The llama.cpp continuous-batching scheduler on the real model: admission, cancellation in each
phase, chunked prefill next to running streams, slot reuse."""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio

from llmserve import AsyncChatModel
from llmserve.engines.llamacpp.kvcache import MIN_STREAM_COPY, common_prefix
from llmserve.errors import Overloaded, QueueTimeout
from tests.conftest import llama_settings

LONG = "Write a very long story about a dragon who learns to sing."
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def model():
    # 2 slots, 64-token steps (so a long prompt takes many steps to prefill), room for 1 waiter
    m = AsyncChatModel(settings=llama_settings(name="sched", parallel=2, ctx_size=4096, batch_size=64,
                                               max_queue=1, queue_timeout=None))
    await m.start()
    yield m
    await m.aclose()


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


async def first_delta(model, prompt, **kw):
    gen = model.astream_deltas(prompt, **kw)
    delta = await anext(gen)
    return gen, delta


async def test_queue_full_is_overloaded_and_queued_cancel_frees_the_place(model):
    engine = model.engine
    a, _ = await first_delta(model, LONG, max_tokens=300, temperature=0.8)
    b, _ = await first_delta(model, LONG, max_tokens=300, temperature=0.8)
    assert engine.stats().running == 2
    queued = asyncio.ensure_future(first_delta(model, "What is 2+2?", max_tokens=8, temperature=0))
    await until(lambda: engine.stats().waiting == 1)
    with pytest.raises(Overloaded):  # 2 running + 1 waiting = parallel + max_queue
        await first_delta(model, "hi", max_tokens=4)
    steps = engine.scheduler.steps
    queued.cancel()  # the client leaves while queued
    await until(lambda: engine.stats().waiting == 0)
    assert engine.scheduler.steps - steps <= 2
    # the place in the queue is free again
    late = asyncio.ensure_future(first_delta(model, "What is 2+2?", max_tokens=8, temperature=0))
    await until(lambda: engine.stats().waiting == 1)
    await a.aclose()  # a slot frees: the waiter gets it within a step
    gen, delta = await asyncio.wait_for(late, 10)
    assert delta.token_ids
    await gen.aclose()
    await b.aclose()
    await until(lambda: engine.stats().running == 0)


async def test_cancel_during_prefill_frees_the_slot_for_the_next_request(model):
    engine = model.engine
    long_prompt = "Summarise this: " + "the quick brown fox jumps over the lazy dog. " * 120  # ~1200 tokens
    task = asyncio.ensure_future(first_delta(model, long_prompt, max_tokens=16))
    await until(lambda: engine.stats().running == 1)
    await until(lambda: engine.scheduler.steps >= 2)  # a few 64-token chunks in
    steps = engine.scheduler.steps
    task.cancel()
    await until(lambda: engine.stats().running == 0)
    assert engine.scheduler.steps - steps <= 2  # gone within a step, not after the whole prompt
    gen, delta = await first_delta(model, "What is 2+2?", max_tokens=8, temperature=0)
    assert delta.token_ids
    await gen.aclose()


async def test_cancel_during_decode_within_a_step(model):
    engine = model.engine
    gen, _ = await first_delta(model, LONG, max_tokens=300, temperature=0.8)
    await anext(gen)
    steps = engine.scheduler.steps
    await gen.aclose()
    await until(lambda: engine.stats().running == 0)
    assert engine.scheduler.steps - steps <= 2


async def test_long_prompt_is_prefilled_in_chunks_while_a_stream_keeps_flowing(model):
    engine = model.engine
    # the stream outlasts the prompt's prefill (ignore_eos): it may take a few tokens a step
    stream, _ = await first_delta(model, LONG, max_tokens=1000, temperature=0.8, ignore_eos=True)
    long_prompt = "Summarise this: " + "the quick brown fox jumps over the lazy dog. " * 120
    big = asyncio.ensure_future(model.achat(long_prompt, max_tokens=4))
    await until(lambda: engine.stats().running == 2)
    steps, tokens = engine.scheduler.steps, 0
    while not big.done():
        await anext(stream)
        tokens += 1
    await big
    await stream.aclose()
    # ~1200 prompt tokens in measured chunks (at most 63 a step) take 19 steps or more: the stream
    # got a token on (almost) every one of them, instead of stalling while one batch ingests it all
    assert engine.scheduler.steps - steps >= 15
    assert tokens >= 12


async def test_greedy_answer_same_alone_and_in_a_busy_batch(model):
    alone = await model.achat("What is 2+2?", temperature=0, max_tokens=24)
    busy, _ = await first_delta(model, LONG, max_tokens=300, temperature=0.8)
    together = await model.achat("What is 2+2?", temperature=0, max_tokens=24)
    await busy.aclose()
    assert together.text == alone.text
    assert "4" in alone.text


async def test_queue_timeout():
    m = AsyncChatModel(settings=llama_settings(name="qt", parallel=1, ctx_size=1024, max_queue=4, queue_timeout=0.3))
    async with m:
        gen, _ = await first_delta(m, LONG, max_tokens=300, temperature=0.8)
        with pytest.raises(QueueTimeout):
            await first_delta(m, "hi", max_tokens=4)
        await gen.aclose()


@pytest.mark.parametrize("kv_split", [False, True], ids=["unified", "split"])
async def test_cold_slots_copy_the_shared_system_prompt_from_another_slot(kv_split):
    questions = ["What is the capital of France? Answer in one word.", "What is 2+2?"]
    async with AsyncChatModel(settings=llama_settings(name="share", parallel=3, ctx_size=3072, kv_split=kv_split)) as m:
        scheduler = m.engine.scheduler
        alone = [(await m.achat(q, temperature=0, max_tokens=12)).text for q in questions]
        # keep the one warm slot, make the others cold again (the engine is idle between requests)
        warm = max(scheduler.slots, key=lambda s: len(s.tokens))
        for slot in scheduler.slots:
            if slot is not warm:
                scheduler.kv.clear(slot)
        prompts = [m.engine.tokenize(m.render(q)) for q in questions]
        shared = common_prefix(prompts[0], tuple(prompts[1]))  # the template's system prompt and more
        assert shared >= MIN_STREAM_COPY
        results = await asyncio.gather(*(m.achat(q, temperature=0, max_tokens=12) for q in questions))
        # one of them took the warm slot; the other's cold slot copied the prefix instead of prefilling it
        assert all(r.usage.cached_tokens >= shared for r in results), [r.usage for r in results]
        # and the copied KV is right: the same greedy answers as from a prefill of their own
        assert [r.text for r in results] == alone
        assert "Paris" in alone[0] and "4" in alone[1]
