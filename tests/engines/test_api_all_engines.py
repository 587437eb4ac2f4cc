"""One HTTP API suite for every installed engine: same requests, same assertions.

Each engine serves the bundled SmolLM2 behind the real app on a real socket (``ThreadServer``),
loaded once for the module. llama.cpp always runs; ``hf`` when torch + transformers + accelerate
import (the main venv); ``vllm`` when vllm imports (``.venv-vllm``, ``make test-vllm``, which
selects ``-m vllm``). Small contexts and small ``max_tokens`` keep it fast on 2 cores.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llmserve.types import Capabilities, SamplingParams
from tests.conftest import ThreadServer
from tests.engines.conftest import CTX, NAME, serve

CHAT = "/v1/chat/completions"
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
# a long answer (hundreds of tokens, a few seconds on any engine here) to disconnect from
DRAGONS = [{"role": "user", "content": "Write a very long story about a family of dragons, chapter by chapter."}]
LONG = {"messages": DRAGONS, "temperature": 0.8, "max_tokens": CTX - 100}
ALL_SAMPLING = frozenset(f.name for f in dataclasses.fields(SamplingParams))


@pytest.fixture(scope="module", params=[
    pytest.param("llamacpp", marks=pytest.mark.model),
    pytest.param("hf", marks=pytest.mark.hf),
    pytest.param("vllm", marks=pytest.mark.vllm),
])
def served(request) -> Iterator[ThreadServer]:
    if request.param == "vllm":  # one vLLM start for the whole tier, shared with test_vllm.py
        yield request.getfixturevalue("vllm_server")
        return
    with serve(request.param) as server:
        yield server


@pytest.fixture
def api(served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=120) as client:
        yield client


def chat(api: httpx.Client, messages=FRANCE, **kw: Any) -> dict:
    r = api.post(CHAT, json={"model": NAME, "messages": messages, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def text_of(out: dict) -> str:
    return out["choices"][0]["message"]["content"]


def stream_events(api: httpx.Client, **kw: Any) -> list[str]:
    with api.stream("POST", CHAT, json={"model": NAME, "messages": FRANCE, "stream": True, **kw}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]


def assert_error(r: httpx.Response, status: int, *, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    return err


def wait_idle(served: ThreadServer, timeout: float = 15.0) -> None:
    engine = served.model.engine
    deadline = time.monotonic() + timeout
    while (engine.stats().running or engine.stats().waiting) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats().running == 0 and engine.stats().waiting == 0, engine.stats()


# -- metadata -------------------------------------------------------------------------------------
def test_models_metadata_matches_engine_capabilities(served, api):
    caps = served.model.engine.capabilities
    (card,) = api.get("/v1/models").json()["data"]
    assert card["id"] == NAME and card["object"] == "model"
    assert card["engine"] == served.engine_name
    assert card["max_model_len"] == caps.max_context == CTX
    assert card["capabilities"]["sampling"] == sorted(caps.sampling)
    assert card["capabilities"]["ready"] is True
    assert card["capabilities"]["structured_outputs"] == sorted(caps.constraints)
    assert {"json_schema", "json_object", "regex", "choice", "grammar"} <= caps.constraints
    tools = card["capabilities"]["tools"]
    assert tools["format"] == caps.tool_format == "json_list"  # SmolLM2's template does not take tools
    assert tools["tool_choice"] == ["none", "auto", "required", "function"]
    assert tools["constrained_auto"] == ("trigger" in caps.constraints)
    assert caps.sampling <= ALL_SAMPLING  # nothing claimed that llmserve cannot even express


def test_sampling_capabilities_are_honoured(api):
    """Each claimed knob visibly acts: top-k 1, a tiny top-p and min-p 1 collapse hot sampling to
    the greedy answer; penalties change the greedy answer."""
    # a confident answer: in bf16 (hf, vllm) an open question can have two top logits exactly tied,
    # and top-k / top-p / min-p keep ties (as vLLM's do), so the draw may pick the other one
    greedy = text_of(chat(api, FRANCE, temperature=0, max_tokens=8))
    for kw in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}):
        assert text_of(chat(api, FRANCE, temperature=1.5, seed=5, max_tokens=8, **kw)) == greedy, kw
    count = [{"role": "user", "content": "Count from 1 to 20."}]  # "1. 1\n2. 2\n...": repetitive
    plain = text_of(chat(api, count, temperature=0, max_tokens=24))
    for kw in ({"repetition_penalty": 2.0}, {"frequency_penalty": 2.0}):
        assert text_of(chat(api, count, temperature=0, max_tokens=24, **kw)) != plain, kw
    # presence is a flat -2 per seen token: too weak against that confident list; a sentence shows it
    sea = [{"role": "user", "content": "Write a long sentence about the sea and the sea birds."}]
    plain = text_of(chat(api, sea, temperature=0, max_tokens=32))
    assert text_of(chat(api, sea, temperature=0, max_tokens=32, presence_penalty=2.0)) != plain


def test_ignore_eos_generates_up_to_max_tokens(api):
    short = chat(api, FRANCE, temperature=0, max_tokens=40)  # "Paris" and the end-of-turn token
    assert short["choices"][0]["finish_reason"] == "stop" and short["usage"]["completion_tokens"] < 40
    out = chat(api, FRANCE, temperature=0, max_tokens=40, ignore_eos=True)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 40
    assert text_of(out).startswith(text_of(short))


class LimitedView:
    """The served engine, claiming fewer sampling parameters than it has (no engine lacks any yet)."""

    def __init__(self, engine, sampling: frozenset[str]):
        self._engine, self._sampling = engine, sampling

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(self._engine.capabilities, sampling=self._sampling)


def test_unclaimed_sampling_parameter_is_400_naming_it(served, api, monkeypatch):
    limited = frozenset({"temperature", "max_tokens", "stop"})
    monkeypatch.setattr(served.model, "engine", LimitedView(served.model.engine, limited))
    card = api.get("/v1/models").json()["data"][0]
    assert card["capabilities"]["sampling"] == sorted(limited)
    assert text_of(chat(api, temperature=0, max_tokens=8))  # what it claims still works
    for param, value in (("top_k", 5), ("seed", 1), ("presence_penalty", 0.5)):
        err = assert_error(api.post(CHAT, json={"messages": FRANCE, param: value}), 400,
                           code="unsupported_parameter", param=param)
        assert param in err["message"] and served.engine_name in err["message"]
    assert api.post(CHAT, json={"messages": FRANCE, "stream": True, "top_k": 5}).status_code == 400
    # a parameter at its default value is not a request for it
    assert chat(api, temperature=0, max_tokens=2, top_k=0)["choices"]


# prefix caching, as docs/engines.md's table says: llama.cpp reuses the slot holding the longest
# prefix, vLLM its automatic prefix caching (whole blocks: 128 tokens on its CPU backend, so the
# prompt is ~330 tokens); the hf engine prefills every prompt
PREFIX_CACHING = {"llamacpp": True, "hf": False, "vllm": True}


def test_prefix_caching_as_documented(served, api):
    msgs = [{"role": "system", "content": "You are a geography teacher. " * 50}, *FRANCE]
    first = chat(api, msgs, temperature=0, max_tokens=2)
    second = chat(api, msgs, temperature=0, max_tokens=2)
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    if PREFIX_CACHING[served.engine_name]:
        assert cached >= first["usage"]["prompt_tokens"] // 2, second["usage"]
    else:
        assert cached == 0


# -- completions ----------------------------------------------------------------------------------
def test_greedy_response_shape(api):
    out = chat(api, temperature=0, max_tokens=16)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert out["model"] == NAME and isinstance(out["created"], int)
    (choice,) = out["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert "Paris" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = out["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_chunks(api):
    events = stream_events(api, temperature=0, max_tokens=16, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == NAME for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([p for p in pieces if p]) >= 3  # token by token, not one blob
    assert "Paris" in "".join(p or "" for p in pieces)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and not any(finishes[:-1])
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and 0 < usage["completion_tokens"] <= 16
    assert all(c.get("usage") is None for c in chunks[:-1])


def test_stop_string_is_not_emitted(api):
    full = text_of(chat(api, temperature=0, max_tokens=16))
    assert "Paris" in full
    cut = chat(api, temperature=0, max_tokens=16, stop=["Paris"])
    assert text_of(cut) == full[: full.index("Paris")]
    assert cut["choices"][0]["finish_reason"] == "stop"
    events = stream_events(api, temperature=0, max_tokens=16, stop="Paris")
    streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert streamed == full[: full.index("Paris")]


def test_max_tokens_is_length(api):
    out = chat(api, [{"role": "user", "content": "Write a long poem about the sea."}], temperature=0, max_tokens=3)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 3
    assert text_of(out)
    out = chat(api, temperature=0, max_completion_tokens=2)
    assert out["usage"]["completion_tokens"] == 2


def test_seed_is_deterministic(api):
    story = [{"role": "user", "content": "Write one sentence about a cat."}]
    kw = {"temperature": 1.0, "seed": 1234, "max_tokens": 12}
    a, b = (text_of(chat(api, story, **kw)) for _ in range(2))
    assert a == b and a


# -- logprobs, logit_bias, n ---------------------------------------------------------------------
# logprobs after logit_bias (llama.cpp, hf); vLLM reports its own raw logprobs, before the bias
LOGPROBS_AFTER_BIAS = {"llamacpp": True, "hf": True, "vllm": False}
# echo with logprobs needs the logits of every prompt position: not on the hf engine
PROMPT_LOGPROBS = {"llamacpp": True, "hf": False, "vllm": True}


def test_logprobs_greedy_token_is_the_likeliest(api):
    out = chat(api, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3)
    content = out["choices"][0]["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == text_of(out) and len(content) == 4
    for t in content:
        top = t["top_logprobs"]
        assert len(top) == 3 and top[0]["token"] == t["token"]
        assert top[0]["logprob"] == pytest.approx(t["logprob"], abs=1e-3) and t["logprob"] <= 0
        assert [x["logprob"] for x in top] == sorted((x["logprob"] for x in top), reverse=True)
        assert bytes(t["bytes"]).decode("utf-8", "replace") == t["token"]
    hot = chat(api, temperature=1.5, seed=2, max_tokens=1, logprobs=True, top_logprobs=3)
    assert [x["token"] for x in hot["choices"][0]["logprobs"]["content"][0]["top_logprobs"]] == \
        [x["token"] for x in content[0]["top_logprobs"]]  # reported before temperature


def test_logit_bias_bans_and_forces(served, api):
    first = chat(api, temperature=0, max_tokens=1, logprobs=True)["choices"][0]["logprobs"]["content"][0]
    greedy_id = api.post("/tokenize", json={"prompt": first["token"]}).json()["tokens"][0]
    banned = chat(api, temperature=0, max_tokens=1, logit_bias={str(greedy_id): -100})
    assert text_of(banned) != first["token"]
    banana = api.post("/tokenize", json={"prompt": " banana"}).json()["tokens"][0]
    forced = chat(api, temperature=0.8, seed=1, max_tokens=1, logprobs=True, logit_bias={str(banana): 100})
    token = forced["choices"][0]["logprobs"]["content"][0]
    assert token["token"] == " banana"
    if LOGPROBS_AFTER_BIAS[served.engine_name]:
        assert token["logprob"] > -0.01


def test_n_choices_with_seed(api):
    story = [{"role": "user", "content": "Write one sentence about a cat."}]
    kw = {"temperature": 1.0, "seed": 77, "max_tokens": 6}
    out = chat(api, story, n=2, **kw)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    texts = [c["message"]["content"] for c in out["choices"]]
    assert texts[1] == text_of(chat(api, story, **{**kw, "seed": 78}))  # choice i: seed + i
    assert out["usage"]["completion_tokens"] == 12
    assert out["usage"]["prompt_tokens"] == chat(api, story, **kw)["usage"]["prompt_tokens"]
    assert_error(api.post(CHAT, json={"messages": story, "n": 3}), 400, param="n")  # 2 slots


def test_completions_logprobs_and_echo(served, api):
    body = {"model": NAME, "prompt": "The capital of France is", "temperature": 0, "max_tokens": 2, "logprobs": 2}
    out = api.post("/v1/completions", json=body).json()["choices"][0]
    assert "".join(out["logprobs"]["tokens"]) == out["text"] and len(out["logprobs"]["token_logprobs"]) == 2
    r = api.post("/v1/completions", json={**body, "echo": True})
    if not PROMPT_LOGPROBS[served.engine_name]:
        assert_error(r, 400, code="unsupported_parameter", param="echo")
        return
    echoed = r.json()["choices"][0]
    assert echoed["text"] == body["prompt"] + out["text"]
    lp = echoed["logprobs"]
    assert lp["token_logprobs"][0] is None and all(v <= 0 for v in lp["token_logprobs"][1:])
    assert lp["tokens"][-2:] == out["logprobs"]["tokens"]


# -- limits and errors ----------------------------------------------------------------------------
def test_context_overflow_is_400(api):
    long = [{"role": "user", "content": "word " * (CTX + 200)}]
    err = assert_error(api.post(CHAT, json={"messages": long}), 400, code="context_length_exceeded")
    assert str(CTX) in err["message"]
    assert_error(api.post(CHAT, json={"messages": FRANCE, "max_tokens": CTX}), 400, code="context_length_exceeded")
    assert_error(api.post(CHAT, json={"messages": long, "stream": True}), 400, code="context_length_exceeded")


@pytest.mark.parametrize("extra, param", [
    ({"functions": [{"name": "f"}]}, "functions"),
])
def test_unsupported_parameters_are_400_naming_them(api, extra, param):
    err = assert_error(api.post(CHAT, json={"messages": FRANCE, **extra}), 400, code="unsupported_parameter", param=param)
    assert param in err["message"]


def test_unknown_field_and_unknown_model(api):
    assert_error(api.post(CHAT, json={"messages": FRANCE, "frobnicate": 1}), 400, param="frobnicate")
    assert_error(api.post(CHAT, json={"model": "nope", "messages": FRANCE}), 404, code="model_not_found", param="model")


# -- structured output ----------------------------------------------------------------------------
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                    "required": ["city"], "additionalProperties": False},
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}
DESCRIBE = [{"role": "user", "content": "Describe a person called Ann from Paris as JSON."}]
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


def test_json_schema_reply_validates(api):
    import jsonschema

    out = chat(api, DESCRIBE, temperature=0, max_tokens=120, response_format=SCHEMA_FORMAT)
    assert out["choices"][0]["finish_reason"] == "stop", out
    jsonschema.validate(json.loads(text_of(out)), PERSON)
    assert "\n" not in text_of(out) and ": " not in text_of(out)  # bounded whitespace: compact JSON
    # sampled too: still valid by construction
    out = chat(api, DESCRIBE, temperature=1.0, seed=7, max_tokens=120, response_format=SCHEMA_FORMAT)
    jsonschema.validate(json.loads(text_of(out)), PERSON)


def test_json_object_and_vllm_fields(api):
    out = chat(api, DESCRIBE, temperature=0, max_tokens=80, response_format={"type": "json_object"})
    if out["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text_of(out)), dict)
    else:  # a 135M model may nest on: what came is still the start of one object
        assert text_of(out).startswith("{")
    out = chat(api, FRANCE, temperature=0, max_tokens=20, structured_outputs={"regex": "[A-Z][a-z]{2,8}"})
    assert re.fullmatch("[A-Z][a-z]{2,8}", text_of(out)), text_of(out)
    out = chat(api, FRANCE, temperature=0, max_tokens=20, guided_choice=["Paris", "London", "Rome"])
    assert text_of(out) == "Paris" and out["choices"][0]["finish_reason"] == "stop"
    out = chat(api, FRANCE, temperature=0, max_tokens=20, structured_outputs={"choice": ["yes", "no"]})
    assert text_of(out) in ("yes", "no")
    out = chat(api, FRANCE, temperature=0, max_tokens=20, guided_json={"type": "object", "properties": {
        "capital": {"type": "string", "maxLength": 10}}, "required": ["capital"], "additionalProperties": False})
    assert set(json.loads(text_of(out))) == {"capital"}


def test_structured_streaming_equals_non_streaming(api):
    kw = {"temperature": 0, "max_tokens": 120, "response_format": SCHEMA_FORMAT}
    whole = chat(api, DESCRIBE, **kw)
    with api.stream("POST", CHAT, json={"model": NAME, "messages": DESCRIBE, "stream": True, **kw}) as r:
        assert r.status_code == 200, r.read()
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == text_of(whole)
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"] == "stop"


def test_max_tokens_mid_json_is_length(api):
    kw = {"messages": DESCRIBE, "temperature": 0, "max_tokens": 6, "response_format": SCHEMA_FORMAT}
    out = chat(api, **kw)
    assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 6
    assert text_of(out).startswith('{"')
    with pytest.raises(ValueError):
        json.loads(text_of(out))  # cut mid-object
    events = stream_events(api, **{k: v for k, v in kw.items() if k != "messages"})
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


def test_completions_take_constraints(api):
    r = api.post("/v1/completions", json={"model": NAME, "prompt": "The capital of France is", "max_tokens": 8,
                                          "temperature": 0, "guided_choice": ["Paris", "Rome"]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] in ("Paris", "Rome")


@pytest.mark.parametrize("extra", [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}}}},
    {"structured_outputs": {"regex": "a(b"}},
    {"guided_grammar": "start: undefined_rule"},
])
@pytest.mark.parametrize("stream", [False, True])
def test_constraint_that_cannot_compile_is_400_before_any_200(api, extra, stream):
    err = assert_error(api.post(CHAT, json={"messages": FRANCE, "stream": stream, **extra}), 400,
                       param="response_format")
    assert err["type"] == "invalid_request_error" and len(err["message"]) > 20
    assert text_of(chat(api, temperature=0, max_tokens=4))  # the engine serves on


# -- tool calls -----------------------------------------------------------------------------------
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 20}},
                   "required": ["timezone"]}}}
TOOLS = [WEATHER, TIME]
PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]
# two earlier turns that called a tool: the 135M model then calls by itself under "auto", by a wide
# margin (one earlier turn leaves "<" and "The" within 0.02 nats of each other)
LONDON = [*PARIS,
          {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
              "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
          {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
          {"role": "assistant", "content": "It is sunny in Paris."},
          {"role": "user", "content": "What is the weather in Berlin?"},
          {"role": "assistant", "content": None, "tool_calls": [{"id": "call_2", "type": "function", "function": {
              "name": "get_weather", "arguments": '{"city": "Berlin"}'}}]},
          {"role": "tool", "tool_call_id": "call_2", "content": "Rainy"},
          {"role": "assistant", "content": "It is rainy in Berlin."},
          {"role": "user", "content": "What is the weather in London?"}]


def tool_calls_of(out: dict) -> list[tuple[str, dict]]:
    import jsonschema

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    calls = []
    for c in out["choices"][0]["message"].get("tool_calls") or ():
        assert c["id"].startswith("call_") and c["type"] == "function"
        arguments = json.loads(c["function"]["arguments"])
        jsonschema.validate(arguments, schemas[c["function"]["name"]])
        calls.append((c["function"]["name"], arguments))
    return calls


def streamed_tool_answer(api: httpx.Client, messages, **kw: Any) -> tuple[str | None, list[tuple[str, str]], str]:
    with api.stream("POST", CHAT, json={"model": NAME, "messages": messages, "stream": True, **kw}) as r:
        assert r.status_code == 200, r.read()
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    content, calls, finish = "", {}, None
    for c in chunks:
        delta = c["choices"][0]["delta"]
        content += delta.get("content") or ""
        for tc in delta.get("tool_calls") or ():
            if "id" in tc:
                calls[tc["index"]] = [tc["function"]["name"], ""]
            else:
                calls[tc["index"]][1] += tc["function"]["arguments"]
        finish = c["choices"][0]["finish_reason"] or finish
    return content or None, [tuple(calls[i]) for i in sorted(calls)], finish


def test_tool_choice_required_and_named(api):
    kw = {"tools": TOOLS, "temperature": 0, "max_tokens": 60}
    out = chat(api, PARIS, tool_choice="required", **kw)
    assert out["choices"][0]["finish_reason"] == "tool_calls" and out["choices"][0]["message"]["content"] is None
    assert tool_calls_of(out) == [("get_weather", {"city": "Paris"})]
    whole = [(c["function"]["name"], c["function"]["arguments"]) for c in out["choices"][0]["message"]["tool_calls"]]
    assert streamed_tool_answer(api, PARIS, tool_choice="required", **kw) == (None, whole, "tool_calls")
    out = chat(api, PARIS, tool_choice={"type": "function", "function": {"name": "get_time"}}, **kw)
    assert [name for name, _ in tool_calls_of(out)] == ["get_time"]
    out = chat(api, PARIS, tool_choice="required", parallel_tool_calls=False, temperature=1.0, seed=5,
               tools=TOOLS, max_tokens=60)
    assert len(tool_calls_of(out)) == 1  # sampled: still one valid call


def test_tool_choice_auto(api):
    kw = {"tools": TOOLS, "temperature": 0, "max_tokens": 60}
    out = chat(api, [{"role": "user", "content": "What is 2+2?"}], **kw)
    assert out["choices"][0]["finish_reason"] == "stop" and "4" in text_of(out)
    assert "tool_calls" not in out["choices"][0]["message"]
    out = chat(api, LONDON, **kw)
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert tool_calls_of(out) == [("get_weather", {"city": "London"})]
    whole = [(c["function"]["name"], c["function"]["arguments"]) for c in out["choices"][0]["message"]["tool_calls"]]
    assert streamed_tool_answer(api, LONDON, **kw) == (None, whole, "tool_calls")


# -- disconnects ----------------------------------------------------------------------------------
def test_stream_disconnect_frees_the_engine(served):
    """Disconnect mid-stream: the engine frees the request. No prompt is certain to outlast a
    starved client (vLLM's greedy count stops at 20 after ~120 tokens), so an attempt whose answer
    already finished normally before the check is retried; anything else fails."""
    engine = served.model.engine
    for _attempt in range(3):
        with httpx.Client(base_url=served.url, timeout=60) as client:
            with client.stream("POST", CHAT, json={**LONG, "stream": True}) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                for line in lines:
                    if '"content":"' in line and '"content":""' not in line:
                        break
                if engine.stats().running == 1:
                    break  # disconnect now, mid-generation
                rest = [line for line in lines if line.startswith("data: ")]
                assert rest[-1] == "data: [DONE]" and '"finish_reason":"' in "".join(rest), rest[-3:]
    else:
        pytest.fail("every attempt finished before the client could disconnect")
    wait_idle(served)


def test_non_streaming_disconnect_frees_the_engine(served):
    with httpx.Client(base_url=served.url, timeout=1.0) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(CHAT, json=LONG)
    wait_idle(served)
