"""The unified KV cache on the real model: whole-context requests beside others, cell accounting
under exhaustion, prefixes shared (not copied) across slots, siblings prefilled once, LRU eviction.

Every test ends by checking that llmserve's ledger of cells agrees with llama.cpp's cache
(``Ledger.check``: each sequence's positions, and the count of cells in use)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from llmserve import AsyncChatModel
from llmserve.engines.llamacpp.kvcache import common_prefix
from llmserve.engines.llamacpp.sizing import plan
from llmserve.errors import Overloaded
from llmserve.types import FinishReason
from tests.conftest import llama_settings

on_loop = pytest.mark.asyncio(loop_scope="session")

CHATS = ["What is 2+2?", "Name three fruits.", "Why is the sky blue?", "Write a haiku about snow.",
         "What is the capital of Italy?", "Say hello in French.", "What colour is grass?"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
ANIMALS = ["fox", "owl", "bear", "otter", "heron", "lynx", "wolf", "crab", "moose"]
CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Quito", "Perth", "Dakar", "Riga", "Hanoi", "Bern"]


def facts(n: int, start: int = 0) -> str:
    pick = itertools.product(COLOURS, ANIMALS, CITIES)
    lines = [f"Fact {start + i}: the {c} {a} lives in {city}." for i, (c, a, city) in zip(range(n), pick)]
    return " ".join(lines)


def long_conversation(n_turns: int = 6, facts_per_turn: int = 80) -> list[dict]:
    messages = []
    for turn in range(n_turns):
        messages.append({"role": "user", "content": "Remember these facts. " + facts(facts_per_turn, turn * facts_per_turn)})
        messages.append({"role": "assistant", "content": f"I have noted facts {turn * facts_per_turn} to "
                                                         f"{(turn + 1) * facts_per_turn - 1}."})
    messages.append({"role": "user", "content": "Where does the red fox live? Answer in one word."})
    return messages


def assert_ledger_agrees(model: AsyncChatModel) -> None:
    assert model.engine.scheduler.kv.check() == []


def forget_cache(model: AsyncChatModel) -> None:
    """Drops every cached prefix (the engine must be idle)."""
    scheduler = model.engine.scheduler
    assert scheduler.n_running == 0
    for slot in scheduler.slots:
        scheduler.kv.clear(slot)


def test_auto_sizing_for_the_bundled_model():
    # SmolLM2-135M: 8,192-token training context, ~23 KB of KV a token
    kv = plan(ctx_size=0, parallel=0, kv_split=False, n_ctx_train=8192, kv_bytes_per_token=23040, memory=16 << 30)
    assert (kv.n_ctx, kv.n_parallel, kv.per_request) == (8192, 32, 8192)
    split = plan(ctx_size=0, parallel=0, kv_split=True, n_ctx_train=8192, kv_bytes_per_token=23040, memory=16 << 30)
    assert (split.n_parallel, split.per_request) == (8, 1024)
    # a 128k-context model on a small machine: the cache is held to a quarter of memory
    big = plan(ctx_size=0, parallel=0, kv_split=False, n_ctx_train=131072, kv_bytes_per_token=131072, memory=8 << 30)
    assert big.n_ctx == 16384 and big.n_parallel == 64


@on_loop
async def test_a_6000_token_conversation_beside_seven_streams_gets_the_same_greedy_answers():
    async with AsyncChatModel(settings=llama_settings(name="long", parallel=0, ctx_size=0)) as m:
        assert m.engine.capabilities.max_context == 8192 and m.engine.kv_plan.n_parallel == 32
        conversation = long_conversation()
        n_prompt = len(m.engine.tokenize(m.render(conversation)))
        assert 5500 < n_prompt < 7000, n_prompt  # far past the old 1,024-token slot
        greedy = {"temperature": 0, "max_tokens": 24}
        alone_long = await m.achat(conversation, **greedy)
        alone = [(await m.achat(q, **greedy)).text for q in CHATS]
        forget_cache(m)

        scheduler = m.engine.scheduler
        before = scheduler.prefilled
        long_task = asyncio.ensure_future(m.achat(conversation, **greedy))
        while scheduler.prefilled == before:  # the long prompt has started
            await asyncio.sleep(0.005)
        steps = scheduler.steps
        chats = await asyncio.gather(*(m.achat(q, **greedy) for q in CHATS))
        chats_done_at = scheduler.steps
        assert not long_task.done()  # the 7 chats were answered while the long prompt was ingested
        together_long = await long_task

        assert together_long.text == alone_long.text
        assert together_long.usage.prompt_tokens == n_prompt
        assert [c.text for c in chats] == alone
        # the long prompt went in chunks beside them, not in one step that stalls everyone
        assert chats_done_at - steps >= 20
        assert_ledger_agrees(m)


@on_loop
async def test_kv_exhaustion_under_32_long_requests_waits_or_ends_with_length_never_mixes():
    topics = ["rivers", "castles", "comets", "violins", "glaciers", "deserts", "bridges", "owls"]
    questions = [f"List what you know about {t}." for t in topics]
    params = {"temperature": 0, "max_tokens": 64, "ignore_eos": True}
    # 256 cells in all: a request needs ~100 (prompt + answer); 32 of them need ~3,200
    settings = llama_settings(name="tight", parallel=32, ctx_size=256, max_queue=64, queue_timeout=None)
    async with AsyncChatModel(settings=settings) as m:
        alone = {q: (await m.achat(q, **params)).text for q in questions}
        results = await asyncio.gather(*(m.achat(q, **params) for q in questions * 4), return_exceptions=True)
        cut = 0
        for q, r in zip(questions * 4, results):
            if isinstance(r, Overloaded):
                continue  # a clean 503 is allowed
            assert not isinstance(r, BaseException), r
            assert r.finish_reason is FinishReason.LENGTH
            cut += r.usage.completion_tokens < 64
            # its own answer, nobody else's: word for word its answer alone as far as it got, though
            # its cells landed in whatever holes the others left (batch-invariant attention)
            assert alone[q].startswith(r.text), (q, r.text, alone[q])
            if r.usage.completion_tokens == 64:
                assert r.text == alone[q]
        assert cut >= 1  # the cache ran out for some: they ended early with "length", no crash
        assert m.engine.stats().running == 0
        assert_ledger_agrees(m)
        again = await m.achat(questions[0], **params)  # and it still serves, whole answers again
        assert again.usage.completion_tokens == 64


@on_loop
async def test_shared_prefixes_take_their_cells_once():
    system = {"role": "system", "content": "You are a careful assistant. " + facts(25)}  # ~300 tokens
    questions = ["Where does the red fox live?", "Where does the blue owl live?",
                 "Where does the green bear live?", "Where does the white crab live?"]
    convs = [[system, {"role": "user", "content": q}] for q in questions]
    # 4 slots in 512 cells: 4 copies of the system prompt would not fit, shared they do
    async with AsyncChatModel(settings=llama_settings(name="shared", parallel=4, ctx_size=512)) as m:
        engine, kv = m.engine, m.engine.scheduler.kv
        prompts = [engine.tokenize(m.render(c)) for c in convs]
        n_system = common_prefix(prompts[0], prompts[1])
        assert 4 * n_system > 512
        first = await m.achat(convs[0], temperature=0, max_tokens=8)
        assert first.usage.cached_tokens == 0
        peak: list[int] = []

        async def watch():
            while True:
                peak.append(engine.stats().running)
                await asyncio.sleep(0.002)

        watcher = asyncio.ensure_future(watch())
        rest = await asyncio.gather(*(m.achat(c, temperature=0, max_tokens=8) for c in convs[1:]))
        watcher.cancel()
        assert all(r.usage.cached_tokens >= n_system for r in rest), [r.usage for r in rest]
        assert max(peak) == 3  # all ran at once: their prefix cells exist once
        held = [len(s.tokens) for s in kv.slots if s.tokens]
        assert len(held) == 4  # the first one's stays cached beside the three
        # all four hold the system prompt's positions, its cells are in use once
        assert kv.used <= n_system + sum(h - n_system for h in held)
        assert_ledger_agrees(m)


@on_loop
async def test_cached_tokens_over_http_for_a_conversations_next_turn(llama_client):
    first = [{"role": "user", "content": "Remember this list. " + facts(20)}]
    r1 = llama_client.post("/v1/chat/completions", json={"messages": first, "temperature": 0, "max_tokens": 12})
    assert r1.status_code == 200, r1.text
    answer = r1.json()["choices"][0]["message"]["content"]
    second = first + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Where does the red fox live?"}]
    r2 = llama_client.post("/v1/chat/completions", json={"messages": second, "temperature": 0, "max_tokens": 12})
    usage = r2.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= r1.json()["usage"]["prompt_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]


def test_models_and_the_400_report_the_whole_context(llama_client):
    models = llama_client.get("/v1/models").json()["data"]
    assert models[0]["max_model_len"] == 8192
    r = llama_client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                        "max_tokens": 8200})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 8192 tokens" in r.json()["error"]["message"]
    ok = llama_client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                         "max_tokens": 4000, "temperature": 0})
    assert ok.status_code == 200  # far past a split slot's 1,024 tokens


@on_loop
async def test_n_siblings_are_prefilled_once():
    prompt = "Read this and answer. " + facts(30) + " Where does the red fox live?"  # ~380 tokens
    async with AsyncChatModel(settings=llama_settings(name="siblings", parallel=8, ctx_size=2048)) as m:
        scheduler = m.engine.scheduler
        n_prompt = len(m.engine.tokenize(m.render(prompt)))
        before = scheduler.prefilled
        results = await asyncio.gather(*(m.achat(prompt, temperature=0.8, max_tokens=8, seed=i) for i in range(4)))
        # one of them prefilled the prompt; the other three waited for its cells and shared them,
        # decoding only the last prompt token again (for its own logits)
        assert scheduler.prefilled - before == n_prompt + 3
        assert sorted(r.usage.cached_tokens for r in results) == [0, n_prompt - 1, n_prompt - 1, n_prompt - 1]
        assert scheduler.kv.used < 2 * n_prompt
        assert_ledger_agrees(m)


@on_loop
async def test_idle_prefixes_are_evicted_least_recently_used_first():
    docs = {name: f"Document {name}. " + facts(9, start) for name, start in (("A", 0), ("B", 100), ("C", 200), ("D", 300))}
    async with AsyncChatModel(settings=llama_settings(name="lru", parallel=8, ctx_size=512)) as m:
        kv = m.engine.scheduler.kv
        prompts = {k: m.engine.tokenize(m.render(v)) for k, v in docs.items()}

        def cached(name: str) -> int:
            return kv.longest_prefix(prompts[name])[1]

        for name in "ABC":
            await m.achat(docs[name], temperature=0, max_tokens=4)
        await m.achat(docs["A"], temperature=0, max_tokens=4)  # A is used again: B is now the oldest
        assert all(cached(n) >= len(prompts[n]) - 1 for n in "ABC")
        # D does not fit without evicting one idle prefix
        assert kv.free < len(prompts["D"]) < kv.free + kv.evictable()
        await m.achat(docs["D"], temperature=0, max_tokens=4)
        assert cached("B") < len(prompts["B"]) // 2  # B went (all but the shared system prompt)
        assert all(cached(n) >= len(prompts[n]) - 1 for n in "ACD")
        assert_ledger_agrees(m)
