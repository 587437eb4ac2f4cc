"""logprobs, top_logprobs, echo, logit_bias and n on the real bundled model (llama.cpp), and the
numpy math behind the logprobs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llmserve.engines.llamacpp.logprobs import LogprobRecorder, logsumexp, top_tokens
from llmserve.types import FORBIDDEN_LOGPROB

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
STORY = [{"role": "user", "content": "Tell me a story about a cat."}]


def chat(client, messages=FRANCE, **kw):
    r = client.post(CHAT, json={"model": "smollm2", "messages": messages, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def content_of(out, i=0):
    return out["choices"][i]["logprobs"]["content"]


# -- the math -------------------------------------------------------------------------------------
def test_logsumexp_normalises_a_vocabulary_row():
    rng = np.random.default_rng(0)
    row = (rng.standard_normal(49152) * 4).astype(np.float32)
    buf = np.empty_like(row)
    lse = logsumexp(row, buf)
    exact = np.log(np.exp(row.astype(np.float64)).sum())
    assert abs(lse - exact) < 1e-5
    assert abs(np.exp(row.astype(np.float64) - lse).sum() - 1.0) < 1e-5  # a distribution
    masked = row.copy()
    masked[100:] = -np.inf  # a grammar forbids most tokens: the rest renormalise
    lse_m = logsumexp(masked, buf)
    assert abs(np.exp(masked[:100].astype(np.float64) - lse_m).sum() - 1.0) < 1e-6
    assert logsumexp(np.full(8, -np.inf, np.float32), np.empty(8, np.float32)) == -np.inf


def test_records_sorted_top_and_forbidden_tokens():
    row = np.array([0.0, 3.0, -np.inf, 1.0, 3.0, -2.0], np.float32)
    rec = LogprobRecorder(6, lambda t: f"t{t}".encode())
    r = rec.record(row, 3, 4)
    lse = math.log(sum(math.exp(x) for x in (0.0, 3.0, 1.0, 3.0, -2.0)))
    assert r.token_id == 3 and r.piece == b"t3" and abs(r.logprob - (1.0 - lse)) < 1e-6
    assert [t.token_id for t in r.top] == [1, 4, 3, 0]  # most likely first, ties by id
    assert [t.logprob for t in r.top] == sorted((t.logprob for t in r.top), reverse=True)
    assert rec.record(row, 2, 0).logprob == FORBIDDEN_LOGPROB and rec.record(row, 2, 0).top == ()
    assert [t.logprob for t in rec.record(row, 1, 6).top][-1] == FORBIDDEN_LOGPROB  # more top than allowed
    assert list(top_tokens(row, 2)) == [1, 4] and list(top_tokens(row, 0)) == []


def test_top_tokens_match_a_full_sort():
    """Candidates near the maximum first, widening to the whole row: always the true top k."""
    rng = np.random.default_rng(1)
    for trial in range(200):
        n = int(rng.integers(1, 3000))
        row = (rng.standard_normal(n) * rng.uniform(0.1, 30)).astype(np.float32)
        if trial % 3 == 0:
            row = np.round(row)  # ties
        if trial % 5 == 0:
            row[rng.random(n) < 0.9] = -np.inf  # a grammar mask
        for k in (1, 5, 20):
            assert np.array_equal(row[top_tokens(row, k)], sorted(row, reverse=True)[:k]), (trial, k)


# -- chat logprobs on the real model ---------------------------------------------------------------
def test_greedy_tokens_have_the_highest_logprob_and_tops_are_sorted(llama_client):
    out = chat(llama_client, temperature=0, max_tokens=6, logprobs=True, top_logprobs=5)
    content = content_of(out)
    assert "".join(t["token"] for t in content) == out["choices"][0]["message"]["content"]
    assert len(content) == out["usage"]["completion_tokens"]  # max_tokens: no end-of-turn token
    for t in content:
        top = t["top_logprobs"]
        assert len(top) == 5
        assert top[0]["token"] == t["token"] and top[0]["logprob"] == pytest.approx(t["logprob"])
        assert [x["logprob"] for x in top] == sorted((x["logprob"] for x in top), reverse=True)
        assert t["logprob"] <= 0 and sum(math.exp(x["logprob"]) for x in top) <= 1.0 + 1e-6
        assert bytes(t["bytes"]).decode() == t["token"]


def test_temperature_and_the_sampling_path_do_not_change_reported_logprobs(llama_client):
    """The first position's distribution is the same whatever the temperature (numpy path) or a
    top-k chain (llama.cpp path) does with it: logprobs are reported before temperature."""
    firsts = []
    for kw in ({"temperature": 0}, {"temperature": 1.8, "seed": 3}, {"temperature": 0.3, "seed": 3, "top_k": 40}):
        first = content_of(chat(llama_client, max_tokens=1, logprobs=True, top_logprobs=5, **kw))[0]
        firsts.append({x["token"]: x["logprob"] for x in first["top_logprobs"]})
    for other in firsts[1:]:
        assert other.keys() == firsts[0].keys()
        for token, lp in other.items():
            assert lp == pytest.approx(firsts[0][token], abs=1e-4)


def test_logprobs_in_the_stream_each_chunk_carries_its_tokens(llama_client):
    with llama_client.stream("POST", CHAT, json={"messages": FRANCE, "temperature": 0, "max_tokens": 8,
                                                 "logprobs": True, "top_logprobs": 2, "stream": True}) as r:
        assert r.status_code == 200
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    seen = []
    for c in chunks:
        choice = c["choices"][0]
        if choice["delta"].get("content"):
            tokens = choice["logprobs"]["content"]
            assert "".join(t["token"] for t in tokens) == choice["delta"]["content"]
            seen += tokens
    whole = content_of(chat(llama_client, temperature=0, max_tokens=8, logprobs=True, top_logprobs=2))
    assert [t["token"] for t in seen] == [t["token"] for t in whole]
    assert [t["logprob"] for t in seen] == pytest.approx([t["logprob"] for t in whole], abs=1e-4)


# -- logit_bias -----------------------------------------------------------------------------------
def test_logit_bias_minus_100_bans_the_greedy_token(llama_client):
    first = content_of(chat(llama_client, temperature=0, max_tokens=1, logprobs=True))[0]
    token_id = llama_client.post("/tokenize", json={"prompt": first["token"]}).json()["tokens"][0]
    bias = {str(token_id): -100}
    banned = chat(llama_client, temperature=0, max_tokens=3, logprobs=True, top_logprobs=5, logit_bias=bias)
    tokens = content_of(banned)
    assert tokens[0]["token"] != first["token"]
    assert first["token"] not in [x["token"] for x in tokens[0]["top_logprobs"]]
    # hot sampling never draws it either
    for seed in range(5):
        out = chat(llama_client, temperature=1.0, seed=seed, max_tokens=1, logprobs=True, logit_bias=bias)
        assert content_of(out)[0]["token"] != first["token"]


def test_logit_bias_plus_100_forces_a_token(llama_client):
    token_id = llama_client.post("/tokenize", json={"prompt": " banana"}).json()["tokens"][0]
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 1}, {"temperature": 1.0, "seed": 1, "top_p": 0.9}):
        out = chat(llama_client, max_tokens=2, logprobs=True, logit_bias={str(token_id): 100}, **kw)
        first = content_of(out)[0]
        assert first["token"] == " banana" and first["logprob"] > -0.01, kw  # the distribution after the bias


def test_logit_bias_outside_the_vocabulary_is_400(llama_client):
    r = llama_client.post(CHAT, json={"messages": FRANCE, "logit_bias": {"10000000": 5}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"


# -- n --------------------------------------------------------------------------------------------
def test_n_with_seed_is_reproducible_per_choice(llama_client):
    kw = {"temperature": 1.0, "seed": 100, "max_tokens": 8}
    out = chat(llama_client, STORY, n=3, **kw)
    texts = [c["message"]["content"] for c in out["choices"]]
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert len(set(texts)) == 3
    alone = chat(llama_client, STORY, **{**kw, "seed": 101})
    assert alone["choices"][0]["message"]["content"] == texts[1]  # choice i samples with seed + i
    assert out["usage"]["prompt_tokens"] == alone["usage"]["prompt_tokens"]
    assert out["usage"]["completion_tokens"] == 3 * 8
    again = chat(llama_client, STORY, n=3, stream=False, **kw)
    assert [c["message"]["content"] for c in again["choices"]] == texts


def test_n_streaming_matches_non_streaming(llama_client):
    kw = {"messages": STORY, "temperature": 1.0, "seed": 5, "max_tokens": 6, "n": 2}
    with llama_client.stream("POST", CHAT, json={**kw, "stream": True, "stream_options": {"include_usage": True}}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    text = {0: "", 1: ""}
    finish = {}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        text[choice["index"]] += choice["delta"].get("content") or ""
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    whole = chat(llama_client, **kw)
    assert [text[0], text[1]] == [c["message"]["content"] for c in whole["choices"]]
    assert finish == {0: "length", 1: "length"}
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert chunks[-1]["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]


# -- completions: legacy logprobs and echo ---------------------------------------------------------
def test_completions_logprobs_and_echo_with_prompt_logprobs(llama_client):
    prompt = "The capital of France is"
    ids = llama_client.post("/tokenize", json={"prompt": prompt}).json()["tokens"]
    body = {"prompt": prompt, "temperature": 0, "max_tokens": 3, "logprobs": 3}
    plain = llama_client.post(COMPLETIONS, json=body).json()["choices"][0]
    lp = plain["logprobs"]
    assert "".join(lp["tokens"]) == plain["text"] and len(lp["tokens"]) == 3
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(3)]
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert token in top and top[token] == pytest.approx(value) and value == max(top.values())

    echoed = llama_client.post(COMPLETIONS, json={**body, "echo": True}).json()["choices"][0]
    elp = echoed["logprobs"]
    assert echoed["text"] == prompt + plain["text"]
    assert len(elp["tokens"]) == len(ids) + 3
    assert "".join(elp["tokens"]) == echoed["text"]
    assert elp["token_logprobs"][0] is None and elp["top_logprobs"][0] is None
    assert all(v is not None and v <= 0 for v in elp["token_logprobs"][1:])
    assert elp["token_logprobs"][len(ids):] == pytest.approx(lp["token_logprobs"], abs=1e-3)
    # the logprob echoed for prompt token k is that of the distribution after tokens[:k]
    k = len(ids) - 1
    cut = llama_client.post(COMPLETIONS, json={"prompt": ids[:k], "temperature": 0, "max_tokens": 1,
                                               "logprobs": 3}).json()["choices"][0]["logprobs"]
    expected = cut["top_logprobs"][0]
    got = elp["top_logprobs"][k]
    assert set(expected) - {cut["tokens"][0]} <= set(got)
    for token in set(expected) & set(got):
        assert got[token] == pytest.approx(expected[token], abs=2e-2)


def test_a_token_the_grammar_forbids_has_minus_9999(llama_client):
    """Logprobs come from the masked distribution: with only "yes" / "no" allowed, the allowed
    tokens share all the mass and the rest of the top 20 are forbidden (-9999.0)."""
    out = chat(llama_client, temperature=0, max_tokens=4, logprobs=True, top_logprobs=20,
               structured_outputs={"choice": ["yes", "no"]})
    assert out["choices"][0]["message"]["content"] in ("yes", "no")
    first = content_of(out)[0]
    values = [x["logprob"] for x in first["top_logprobs"]]
    allowed = [v for v in values if v > FORBIDDEN_LOGPROB]
    assert 1 <= len(allowed) < 20 and values[len(allowed):] == [FORBIDDEN_LOGPROB] * (20 - len(allowed))
    assert abs(sum(math.exp(v) for v in allowed) - 1.0) < 1e-3  # the allowed tokens hold all the mass
