"""Structured output inside the thread-backed engines (llama.cpp, transformers), in process:
lazy triggers that end mid-token, masks under the llama.cpp sampler chains, and a grammar failure
that ends one sequence while its neighbour finishes normally."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from llmserve.chat_model import AsyncChatModel
from llmserve.errors import EngineError
from llmserve.types import Constraint, Delta, FinishReason, SamplingParams
from tests.conftest import THREADS
from tests.engines.conftest import require_engine

pytestmark = pytest.mark.asyncio(loop_scope="session")
FRANCE = "What is the capital of France? Answer in one word."  # greedy: "Paris"


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=[
    pytest.param("llamacpp", marks=pytest.mark.model),
    pytest.param("hf", marks=pytest.mark.hf),
])
async def model(request) -> AsyncIterator[AsyncChatModel]:
    require_engine(request.param)
    ctx = {"llamacpp": 4096, "hf": 1024}[request.param]
    m = AsyncChatModel(engine=request.param, name="structured", parallel=2, ctx_size=ctx, threads=THREADS)
    await m.start()
    yield m
    await m.aclose()


async def run(model: AsyncChatModel, prompt: str, constraint: Constraint | None, **sampling) -> tuple[str, Delta]:
    req = model.build_request(model.render(prompt), SamplingParams(**sampling), constraint=constraint)
    parts: list[str] = []
    last = Delta()
    async for delta in model.agenerate(req):
        parts.append(delta.text)
        last = delta
    return "".join(parts), last


async def test_lazy_trigger_ending_mid_token(model):
    free, _ = await run(model, FRANCE, None, temperature=0, max_tokens=16)
    assert "Paris" in free  # "... is Paris.": the token " Paris" holds the trigger "Par" mid-token
    text, last = await run(model, FRANCE, Constraint("grammar", 'start: "Paris" " is nice"', trigger="Par"),
                           temperature=0, max_tokens=16)
    assert text == free[:free.index("Paris")] + "Paris is nice" and last.finish_reason is FinishReason.STOP


async def test_lazy_trigger_that_never_appears_changes_nothing(model):
    free, _ = await run(model, FRANCE, None, temperature=0, max_tokens=16)
    lazy, _ = await run(model, FRANCE, Constraint("json_object", trigger="<tool_call>"), temperature=0, max_tokens=16)
    assert lazy == free


async def test_masks_hold_under_sampler_chains(model):
    """top-k, top-p and penalties run through llama.cpp's sampler chain (not the numpy path):
    they must see the masked logits too."""
    pattern = "[A-Z][a-z]{2,6}-[0-9]{2}"
    for seed in range(3):
        text, _ = await run(model, FRANCE, Constraint("regex", pattern), temperature=1.2, top_k=40, top_p=0.9,
                            repetition_penalty=1.3, seed=seed, max_tokens=20)
        assert re.fullmatch(pattern, text), text


async def test_grammar_failure_ends_only_that_sequence(model):
    # the text from the trigger is "Paris", which "Parrot" cannot match
    broken = asyncio.ensure_future(run(model, FRANCE, Constraint("grammar", 'start: "Parrot"', trigger="Par"),
                                       temperature=0, max_tokens=16))
    neighbour = asyncio.ensure_future(run(model, "Count from 1 to 10.", None, temperature=0, max_tokens=24))
    with pytest.raises(EngineError, match="Par"):
        await broken
    text, last = await neighbour
    assert last.finish_reason in (FinishReason.STOP, FinishReason.LENGTH) and "1" in text
    text, _ = await run(model, FRANCE, Constraint("choice", '["Paris", "Rome"]'), temperature=0, max_tokens=8)
    assert text == "Paris"  # the engine serves on


async def test_in_process_api_takes_a_constraint(model):
    reply = await model.achat(FRANCE, temperature=0, constraint=Constraint("regex", "[A-Z]{3}"))
    assert re.fullmatch("[A-Z]{3}", reply.text) and reply.finish_reason is FinishReason.STOP
