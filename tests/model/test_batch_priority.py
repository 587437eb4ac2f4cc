"""Batch lines run at low priority in the llama.cpp scheduler (real model): a live request gets a
slot within a step even when batch sequences fill every slot; the paused batch sequences resume
and their streams continue as if nothing happened."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
import pytest_asyncio

from llmserve import AsyncChatModel
from llmserve.types import PRIORITY_BATCH, SamplingParams
from tests.conftest import llama_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")
FRANCE = "What is the capital of France? Answer in one word."
PROMPTS = ["Write a story about a dragon.", "List some fruits and their colours."]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def model():
    # 2 slots and no queue for live requests: batch sequences must not take a live request's place
    m = AsyncChatModel(settings=llama_settings(name="prio", parallel=2, ctx_size=2048, max_queue=0))
    await m.start()
    yield m
    await m.aclose()


def request(model, prompt: str, max_tokens: int, priority: int = 0):
    req = model.build_request(model.render(prompt), SamplingParams(temperature=0, max_tokens=max_tokens))
    return dataclasses.replace(req, priority=priority)


async def collect(model, req, progress: list | None = None) -> tuple[str, object]:
    progress = [] if progress is None else progress
    async for delta in model.agenerate(req):
        progress.append(delta)
    return "".join(d.text for d in progress), progress


async def until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)


async def test_live_request_preempts_batch_within_a_step_and_batch_resumes_seamlessly(model):
    scheduler = model.engine.scheduler
    n = 40
    # reference: the two batch sequences uninterrupted
    alone = await asyncio.gather(*(collect(model, request(model, p, n, PRIORITY_BATCH)) for p in PROMPTS))
    live_alone, _ = await collect(model, request(model, FRANCE, 8))

    progress: list[list] = [[], []]
    batch = [asyncio.ensure_future(collect(model, request(model, p, n, PRIORITY_BATCH), progress[i]))
             for i, p in enumerate(PROMPTS)]
    await until(lambda: all(len(p) >= 5 for p in progress))  # both slots busy with batch work
    assert model.engine.stats().running == 2
    steps = scheduler.steps
    before = [len(p) for p in progress]
    live = model.agenerate(request(model, FRANCE, 8))
    first = await anext(live)  # not refused (max_queue 0) and not left waiting behind the batch
    assert first.token_ids
    assert scheduler.steps - steps <= 2  # admitted and prefilled at the next step
    assert model.engine.stats().running == 1  # the batch sequences are paused while live traffic runs
    text = first.text + "".join([d.text async for d in live])
    assert text == live_alone and "Paris" in text
    resumed = await asyncio.gather(*batch)
    for (_, ref), (_, deltas), k in zip(alone, resumed, before):
        tokens = [t for d in deltas for t in d.token_ids]
        # the stream went on from where it stopped: nothing lost or repeated at the seam, the same
        # tokens as uninterrupted up to it (after it, a re-prefilled KV may round differently)
        assert len(tokens) == n and tokens[:k] == [t for d in ref for t in d.token_ids][:k]
        assert all(len(d.token_ids) == 1 for d in deltas)
        assert deltas[-1].usage.completion_tokens == n == ref[-1].usage.completion_tokens
        assert deltas[-1].usage.prompt_tokens == ref[-1].usage.prompt_tokens
    assert model.engine.stats().running == 0 and model.engine.stats().waiting == 0
    assert scheduler.n_background == 0


async def test_batch_waits_while_live_traffic_runs(model):
    scheduler = model.engine.scheduler
    holders = [model.agenerate(request(model, p, 200)) for p in PROMPTS]  # live: both slots
    for h in holders:
        await anext(h)
    queued_batch = asyncio.ensure_future(collect(model, request(model, "Say hi.", 4, PRIORITY_BATCH)))
    await until(lambda: model.engine.stats().waiting == 1)
    assert scheduler.n_background == 1  # it waits, and never counts against the live queue
    await holders[0].aclose()  # a slot frees, but a live stream still runs: the batch line waits
    steps = scheduler.steps
    await until(lambda: scheduler.steps >= steps + 5)
    assert model.engine.stats().waiting == 1 and model.engine.stats().running == 1
    await holders[1].aclose()  # no live traffic left: the batch line runs
    text, deltas = await asyncio.wait_for(queued_batch, 60)
    assert deltas[-1].usage.completion_tokens <= 4
    await until(lambda: model.engine.stats().running == 0)
