"""The vLLM engine on the bundled SmolLM2 (converted once to safetensors), in process.

Runs only where vLLM is installed (its own venv): ``make test-vllm``. The engine is the session's
one vLLM start (``vllm_server``, shared with the HTTP suite), so each test runs its coroutine on
that server's event loop (``vllm_server.call``), where the engine lives.
"""

from __future__ import annotations

import asyncio

import pytest

from llmserve.chat_model import AsyncChatModel
from llmserve.errors import Overloaded
from llmserve.types import FinishReason, Message
from tests.conftest import ThreadServer

pytestmark = pytest.mark.vllm

FRANCE = "What is the capital of France? Answer in one word."
ARITH = "What is 2+2? Answer with a number."
GREEDY = {"temperature": 0}


@pytest.fixture
def model(vllm_server: ThreadServer) -> AsyncChatModel:
    return vllm_server.model


@pytest.fixture
def run(vllm_server: ThreadServer):
    return vllm_server.call


async def wait_idle(m: AsyncChatModel, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while m.engine.stats().running or m.engine.stats().waiting:
        assert asyncio.get_running_loop().time() < deadline, m.engine.stats()
        await asyncio.sleep(0.02)


def test_template_matches_tokenizer(model):
    tok = model.engine.tokenizer
    msgs = [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", FRANCE)]
    ours = model.engine.render_chat(msgs)
    theirs = tok.apply_chat_template([{"role": m.role, "content": m.content} for m in msgs],
                                     tokenize=False, add_generation_prompt=True)
    assert ours == theirs


def test_greedy_france(model, run):
    c = run(model.achat(FRANCE, **GREEDY, max_tokens=16))
    assert "Paris" in c.text
    assert "<|im_end|>" not in c.text
    assert c.finish_reason is FinishReason.STOP
    assert c.usage.prompt_tokens > 0 and 0 < c.usage.completion_tokens <= 16


def test_streams_several_deltas(model, run):
    async def collect():
        return [d async for d in model.astream_deltas(FRANCE, **GREEDY, max_tokens=16)]

    deltas = run(collect())
    assert sum(1 for d in deltas if d.text) >= 3
    assert deltas[-1].finish_reason is not None and deltas[-1].usage is not None


def test_max_tokens_is_length(model, run):
    c = run(model.achat("Write a long poem about the sea.", **GREEDY, max_tokens=4))
    assert c.finish_reason is FinishReason.LENGTH
    assert c.usage.completion_tokens == 4


def test_seed_is_deterministic(model, run):
    kw = {"temperature": 1.0, "top_p": 0.95, "top_k": 50, "seed": 1234, "max_tokens": 12}
    a = run(model.achat("Tell me a story about a cat.", **kw))
    b = run(model.achat("Tell me a story about a cat.", **kw))
    assert a.text == b.text and a.text


def test_cancel_frees_the_slot(model, run):
    async def body():
        stream = model.astream_deltas("Count from one to one hundred.", **GREEDY, max_tokens=200)
        await stream.__anext__()
        await stream.__anext__()
        assert model.engine.stats().running == 1
        await stream.aclose()
        await wait_idle(model)
        assert model.engine.stats().running == 0

    run(body())


def test_concurrent_requests_get_their_own_answers(model, run):
    async def body():
        return await asyncio.gather(*(model.achat(p, **GREEDY, max_tokens=16) for p in (FRANCE, ARITH, FRANCE)))

    together = run(body())
    assert "Paris" in together[0].text and "Paris" in together[2].text
    assert "4" in together[1].text


def test_queue_full_is_overloaded(model, run):
    async def body():
        streams = [model.astream_deltas(f"Count from one to {n}.", **GREEDY, max_tokens=200) for n in (50, 60, 70, 80)]
        tasks = [asyncio.ensure_future(s.__anext__()) for s in streams]
        try:
            await asyncio.wait_for(asyncio.shield(tasks[0]), 30)
            with pytest.raises(Overloaded):
                await model.achat(FRANCE, **GREEDY, max_tokens=4)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for s in streams:
                await s.aclose()
        await wait_idle(model)

    run(body())


def test_preflight_checks_the_architecture_before_any_load(tmp_path):
    """``llmserve serve --engine vllm`` refuses, before binding, what vLLM cannot run."""
    pytest.importorskip("vllm")
    from llmserve.engines import preflight
    from llmserve.errors import InvalidModel
    from llmserve.settings import ModelSettings

    preflight(ModelSettings(engine="vllm"))  # the bundled GGUF: converted through transformers
    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["NoSuchForCausalLM"]}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InvalidModel, match="vLLM does not implement NoSuchForCausalLM"):
        preflight(ModelSettings(engine="vllm", path=str(tmp_path)))
