"""Completions, embeddings and tokenize over the real bundled model (llama.cpp)."""

from __future__ import annotations

import math
import threading

import pytest

from llmserve.chat_model import AsyncChatModel
from tests.conftest import app_client, llama_settings

pytestmark = pytest.mark.model


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def embed(client, texts, model="smollm2", **kw):
    r = client.post("/v1/embeddings", json={"model": model, "input": texts, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_completion_greedy(llama_client):
    body = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    a = llama_client.post("/v1/completions", json=body).json()
    b = llama_client.post("/v1/completions", json=body).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"] != ""
    assert a["choices"][0]["finish_reason"] == "length"
    count = llama_client.post("/tokenize", json={"prompt": "The capital of France is"}).json()["count"]
    assert a["usage"]["prompt_tokens"] == count


def test_tokenize_roundtrip(llama_client):
    out = llama_client.post("/tokenize", json={"prompt": "Hello, world!", "add_special_tokens": False}).json()
    assert 0 < out["count"] == len(out["tokens"])
    assert out["max_model_len"] > 0
    back = llama_client.post("/detokenize", json={"tokens": out["tokens"]}).json()
    assert back["prompt"] == "Hello, world!"
    chat = llama_client.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}],
                                                "return_token_strs": True}).json()
    assert "<|im_start|>" in chat["token_strs"]
    r = llama_client.post("/detokenize", json={"tokens": [10**7]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    r = llama_client.post("/v1/completions", json={"prompt": [10**7], "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_embeddings_of_the_chat_model(llama_client):
    out = embed(llama_client, ["The cat sat on the mat.", "A cat is sitting on a mat.",
                               "Quarterly revenue grew by four percent."])
    cat, cat2, money = (d["embedding"] for d in out["data"])
    assert len(cat) == 576  # SmolLM2-135M's hidden size
    assert abs(math.sqrt(sum(x * x for x in cat)) - 1) < 1e-4
    assert cosine(cat, cat2) > cosine(cat, money)
    assert out["usage"]["prompt_tokens"] > 10
    again = embed(llama_client, "The cat sat on the mat.")["data"][0]["embedding"]
    assert cosine(cat, again) > 0.9999  # batching does not change a vector


def test_embeddings_while_generating(llama_client):
    """The embeddings context is separate from the decode loop's: both work at once."""
    results = {}

    def chat():
        results["chat"] = llama_client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 24, "temperature": 0,
        }).json()

    t = threading.Thread(target=chat)
    t.start()
    vectors = [embed(llama_client, f"sentence number {i}")["data"][0]["embedding"] for i in range(3)]
    t.join()
    assert results["chat"]["usage"]["completion_tokens"] > 0
    assert all(len(v) == 576 for v in vectors)


def test_a_gguf_served_for_embeddings_only(bundled_path):
    embedder = AsyncChatModel(settings=llama_settings(name="embedder", path=str(bundled_path),
                                                      options={"embedding": True, "embedding_ctx": 256}))
    with app_client(embedder) as client:
        out = embed(client, ["hello", "world"], model="embedder", encoding_format="base64")
        assert len(out["data"]) == 2 and isinstance(out["data"][0]["embedding"], str)
        r = client.post("/v1/chat/completions", json={"model": "embedder", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "embeddings only" in r.json()["error"]["message"]
        r = client.post("/v1/embeddings", json={"model": "embedder", "input": "word " * 400})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        card = client.get("/v1/models").json()["data"][0]
        assert card["max_model_len"] == 256


def test_bench_and_metrics_on_the_real_engine(llama_server, capsys):
    import json

    from prometheus_client.parser import text_string_to_metric_families

    from llmserve.cli import main

    rc = main(["bench", "--url", f"llmserve={llama_server.url}", "--concurrency", "1,2", "--requests", "2",
               "--max-tokens", "8", "--warmup", "0", "--json", "--no-progress"])
    rows = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [r["errors"] for r in rows] == [0, 0]
    assert all(r["output_tokens"] > 0 and r["ttft_p50_ms"] > 0 for r in rows)
    import httpx

    text = httpx.get(llama_server.url + "/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    done = sum(v for (name, _), v in samples.items() if name == "llmserve:request_success_total")
    assert done >= 4
    assert samples[("llmserve:request_queue_time_seconds_count", (("model_name", "smollm2"),))] >= 4
    assert samples[("llmserve:generation_tokens_total", (("model_name", "smollm2"),))] >= sum(
        r["output_tokens"] for r in rows)


def test_bench_client_reports_the_prompt_tokens_the_server_reused(llama_server):
    import asyncio

    from llmserve.bench.client import open_session, stream_chat

    turn1 = [{"role": "user", "content": "List five rivers of Europe, with a sentence about each one of them."}]

    async def two_turns():
        async with open_session(connections=1, timeout=120) as session:
            first = await stream_chat(session, llama_server.url, model="smollm2", messages=turn1, max_tokens=8)
            turn2 = turn1 + [{"role": "assistant", "content": "The Danube."}, {"role": "user", "content": "More?"}]
            return first, await stream_chat(session, llama_server.url, model="smollm2", messages=turn2, max_tokens=4)

    first, second = asyncio.run(two_turns())
    assert first.ok and second.ok, (first.error, second.error)
    assert isinstance(first.cached_tokens, int) and first.prompt_tokens > 40
    # the second turn starts with the first one's whole prompt (system prompt + question: > 40 tokens)
    assert second.cached_tokens > max(first.cached_tokens, 40)
