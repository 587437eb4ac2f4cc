"""The transformers engine on the bundled SmolLM2 GGUF: one model load for the whole module."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

pytest.importorskip("torch")
pytest.importorskip("transformers")

from llmserve.chat_model import AsyncChatModel  # noqa: E402
from llmserve.errors import Overloaded  # noqa: E402
from llmserve.types import FinishReason, Message  # noqa: E402

pytestmark = pytest.mark.hf

FRANCE = "What is the capital of France? Answer in one word."
ARITH = "What is 2+2? Answer with a number."
GREEDY = {"temperature": 0}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def model():
    # 2 slots and a queue of 2: small enough to test admission, large enough to batch
    m = AsyncChatModel(engine="hf", parallel=2, max_queue=2, threads=2)
    await m.start()
    yield m
    await m.aclose()


async def wait_idle(m: AsyncChatModel, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while m.engine.stats().running or m.engine.stats().waiting:
        assert asyncio.get_running_loop().time() < deadline, m.engine.stats()
        await asyncio.sleep(0.02)


async def test_template_matches_transformers(model):
    tok = model.engine.loaded.tokenizer
    msgs = [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", FRANCE)]
    for gen in (True, False):
        ours = model.engine.render_chat(msgs, add_generation_prompt=gen)
        theirs = tok.apply_chat_template([{"role": m.role, "content": m.content} for m in msgs],
                                         tokenize=False, add_generation_prompt=gen)
        assert ours == theirs


async def test_greedy_france(model):
    c = await model.achat(FRANCE, **GREEDY, max_tokens=16)
    assert "Paris" in c.text
    assert c.finish_reason is FinishReason.STOP
    assert c.usage.prompt_tokens > 0 and 0 < c.usage.completion_tokens <= 16


async def test_streams_several_deltas(model):
    deltas = [d async for d in model.astream_deltas(FRANCE, **GREEDY, max_tokens=16)]
    assert sum(1 for d in deltas if d.text) >= 3
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert deltas[-1].finish_reason is not None


async def test_max_tokens_is_length(model):
    c = await model.achat("Write a long poem about the sea.", **GREEDY, max_tokens=4)
    assert c.finish_reason is FinishReason.LENGTH
    assert c.usage.completion_tokens == 4


async def test_seed_is_deterministic(model):
    kw = {"temperature": 1.0, "top_p": 0.95, "top_k": 50, "seed": 1234, "max_tokens": 12}
    a = await model.achat("Tell me a story about a cat.", **kw)
    b = await model.achat("Tell me a story about a cat.", **kw)
    assert a.text == b.text and a.text


async def test_cancel_frees_the_slot(model):
    stream = model.astream_deltas("Count from one to one hundred.", **GREEDY, max_tokens=200)
    await stream.__anext__()
    await stream.__anext__()
    assert model.engine.stats().running == 1
    await stream.aclose()
    await wait_idle(model)
    assert model.engine.stats().running == 0


async def test_concurrent_requests_get_their_own_answers(model):
    prompts = [FRANCE, ARITH, FRANCE]  # 3 requests on 2 slots: the third joins a running batch
    alone = [(await model.achat(p, **GREEDY, max_tokens=16)).text for p in prompts[:2]]
    together = await asyncio.gather(*(model.achat(p, **GREEDY, max_tokens=16) for p in prompts))
    assert "Paris" in together[0].text and "Paris" in together[2].text
    assert "4" in together[1].text
    assert [c.text for c in together] == [alone[0], alone[1], alone[0]]


async def test_queue_full_is_overloaded(model):
    streams = [model.astream_deltas(f"Count from one to {n}.", **GREEDY, max_tokens=200) for n in (50, 60, 70, 80)]
    tasks = [asyncio.ensure_future(s.__anext__()) for s in streams]  # 2 running + 2 waiting
    try:
        await asyncio.wait_for(asyncio.shield(tasks[0]), 30)
        assert model.engine.stats().running + model.engine.stats().waiting == 4
        with pytest.raises(Overloaded):
            await model.achat(FRANCE, **GREEDY, max_tokens=4)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in streams:
            await s.aclose()
    await wait_idle(model)
