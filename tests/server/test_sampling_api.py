"""n choices, logprobs / top_logprobs, echo and logit_bias through the HTTP API, over fake engines
(the wire shapes, the merge of n streams, usage, aborts and errors; the values themselves are
tested against the real model in tests/model/test_logprobs_llama.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from llmserve.chat_model import AsyncChatModel
from llmserve.errors import InvalidRequest, UnsupportedParameter
from llmserve.fanout import fan_out, total_usage
from llmserve.settings import ModelSettings
from llmserve.types import ALL_SAMPLING, Capabilities, GenerationRequest, SamplingParams, Usage
from llmserve.server.app import create_app
from llmserve.settings import Settings
from tests.conftest import ThreadServer, fake_model, free_port
from tests.server.test_chat_api import CHAT, assert_error, body, sse_events

COMPLETIONS = "/v1/completions"


# -- n ------------------------------------------------------------------------------------------
def test_n_choices_indices_and_usage_counting_the_prompt_once(client):
    one = client.post(CHAT, json=body(temperature=0)).json()
    out = client.post(CHAT, json=body(temperature=0, n=3)).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "hello there" and c["finish_reason"] == "stop" for c in out["choices"])
    assert out["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    assert out["usage"]["completion_tokens"] == 3 * one["usage"]["completion_tokens"]
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]


def test_n_with_seed_choice_i_is_reproducible_and_is_seed_plus_i(client):
    texts = [c["message"]["content"] for c in client.post(CHAT, json=body(n=3, seed=40)).json()["choices"]]
    again = [c["message"]["content"] for c in client.post(CHAT, json=body(n=3, seed=40)).json()["choices"]]
    assert texts == again
    assert len(set(texts)) > 1  # the choices differ from one another
    for i, text in enumerate(texts):  # the documented rule: choice i samples with seed + i
        alone = client.post(CHAT, json=body(seed=40 + i)).json()["choices"][0]["message"]["content"]
        assert alone == text


def test_n_streaming_every_choice_has_its_role_text_and_finish(client):
    r = client.post(CHAT, json=body(n=3, seed=7, stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    roles = [c["choices"][0]["index"] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("role")]
    assert sorted(roles) == [0, 1, 2]
    text = {0: "", 1: "", 2: ""}
    finish = {}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        text[choice["index"]] += choice["delta"].get("content") or ""
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    assert finish == {0: "stop", 1: "stop", 2: "stop"}
    full = client.post(CHAT, json=body(n=3, seed=7)).json()
    assert [text[i] for i in range(3)] == [c["message"]["content"] for c in full["choices"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]


def test_n_beyond_the_slots_is_400_and_up_to_them_waits(make_client):
    with make_client(fake_model(parallel=2, max_queue=4, token_delay=0.01)) as client:
        assert_error(client.post(CHAT, json=body(n=3)), 400, param="n")
        out = client.post(CHAT, json=body(n=2, temperature=0))  # both slots: fine
        assert len(out.json()["choices"]) == 2
    with make_client(fake_model()) as client:
        assert_error(client.post(CHAT, json=body(n=0)), 400, param="n")
        assert_error(client.post(CHAT, json=body(n=500)), 400, param="n")


def test_closing_an_n_stream_aborts_every_choice():
    """A real socket (the TestClient never disconnects): leaving mid-stream frees all n."""
    model = fake_model(parallel=4, token_delay=0.02, reply=" ".join(["word"] * 200))
    with ThreadServer(create_app(Settings(), models=[model]), free_port()) as server:
        with httpx.Client(base_url=server.url) as c:
            with c.stream("POST", CHAT, json=body(n=3, stream=True)) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                for _ in range(8):
                    next(lines)
                assert model.engine.stats().running == 3
            end = time.monotonic() + 5
            while model.engine.stats().running and time.monotonic() < end:
                time.sleep(0.02)
            assert model.engine.stats().running == 0
            # and non-streaming: a client that gives up aborts all n too
            with pytest.raises(httpx.ReadTimeout):
                c.post(CHAT, json=body(n=3), timeout=0.3)
            end = time.monotonic() + 5
            while model.engine.stats().running and time.monotonic() < end:
                time.sleep(0.02)
            assert model.engine.stats().running == 0


def test_one_choice_refused_admission_fails_the_call_and_frees_the_others(make_client):
    """2 slots, no queue, one busy: of n=2 one is admitted, the other is refused (503); the call
    fails as a whole and the admitted choice is aborted, not left running."""
    model = fake_model(parallel=2, max_queue=0, token_delay=0.02, reply=" ".join(["word"] * 50))
    with make_client(model) as client:
        busy = threading.Thread(target=lambda: client.post(CHAT, json=body()))
        busy.start()
        end = time.monotonic() + 5
        while model.engine.stats().running < 1 and time.monotonic() < end:
            time.sleep(0.01)
        for stream in (False, True):
            r = client.post(CHAT, json=body(n=2, stream=stream))
            assert r.status_code == 503 and r.json()["error"]["code"] is not None
            assert model.engine.stats().running == 1  # only the busy request
        busy.join()


def test_fan_out_requests_share_a_group_and_take_seed_plus_i():
    base = GenerationRequest("cmpl-1", (1, 2, 3), SamplingParams(seed=10))
    assert fan_out(base, 1) == [base]
    reqs = fan_out(base, 3)
    assert [r.request_id for r in reqs] == ["cmpl-1-0", "cmpl-1-1", "cmpl-1-2"]
    assert {r.group for r in reqs} == {"cmpl-1"} and all(r.prompt_tokens == (1, 2, 3) for r in reqs)
    assert [r.sampling.seed for r in reqs] == [10, 11, 12]
    unseeded = fan_out(GenerationRequest("x", (1,)), 2)
    assert [r.sampling.seed for r in unseeded] == [None, None]


def test_total_usage_counts_each_prompt_once():
    usages = [Usage(10, 3, 4), Usage(10, 5, 10), Usage(7, 1, 0), Usage(7, 2, 7)]
    assert total_usage(usages, 2) == Usage(17, 11, 4)
    assert total_usage(usages, 1) == Usage(34, 11, 21)


# -- logprobs -----------------------------------------------------------------------------------
def test_chat_logprobs_shape(client):
    out = client.post(CHAT, json=body(temperature=0, logprobs=True, top_logprobs=2)).json()
    (choice,) = out["choices"]
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"] == "hello there"
    for t in content:
        assert set(t) == {"token", "logprob", "bytes", "top_logprobs"}
        assert bytes(t["bytes"]).decode() == t["token"] and t["logprob"] <= 0
        assert len(t["top_logprobs"]) == 2 and t["top_logprobs"][0]["token"] == t["token"]
        assert t["top_logprobs"][0]["logprob"] >= t["top_logprobs"][1]["logprob"]
    # logprobs without top_logprobs: no alternatives; without logprobs: null
    out = client.post(CHAT, json=body(temperature=0, logprobs=True)).json()
    assert all(t["top_logprobs"] == [] for t in out["choices"][0]["logprobs"]["content"])
    assert client.post(CHAT, json=body(temperature=0)).json()["choices"][0]["logprobs"] is None


def test_chat_logprobs_in_the_stream_each_chunk_carries_its_tokens(client):
    r = client.post(CHAT, json=body(temperature=0, logprobs=True, top_logprobs=1, stream=True))
    chunks = [e for e in sse_events(r.text) if e != "[DONE]"]
    with_text = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert with_text
    for c in with_text:
        (choice,) = c["choices"]
        tokens = choice["logprobs"]["content"]
        assert "".join(t["token"] for t in tokens) == choice["delta"]["content"]
        assert all(len(t["top_logprobs"]) == 1 for t in tokens)


def test_logprobs_errors(client):
    assert_error(client.post(CHAT, json=body(top_logprobs=3)), 400, param="top_logprobs")
    assert_error(client.post(CHAT, json=body(logprobs=True, top_logprobs=21)), 400, param="top_logprobs")
    assert_error(client.post(COMPLETIONS, json={"prompt": "hi", "logprobs": 21}), 400, param="logprobs")


def test_completions_legacy_logprobs_and_echo(client):
    out = client.post(COMPLETIONS, json={"prompt": "once upon a", "temperature": 0, "logprobs": 2}).json()
    (choice,) = out["choices"]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(lp["tokens"]) == choice["text"] == "once upon a"
    assert lp["text_offset"] == [0, 4, 9]
    assert all(len(top) == 2 and lp["tokens"][i] in top for i, top in enumerate(lp["top_logprobs"]))
    echoed = client.post(COMPLETIONS, json={"prompt": "once upon a", "temperature": 0, "logprobs": 1,
                                            "echo": True}).json()["choices"][0]
    assert echoed["text"] == "once upon a" + "once upon a"
    lp = echoed["logprobs"]
    assert lp["tokens"] == ["once", " upon", " a"] * 2
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(v is not None for v in lp["token_logprobs"][1:])
    assert lp["text_offset"] == [0, 4, 9, 11, 15, 20]
    # echo alone: the prompt, then the completion
    plain = client.post(COMPLETIONS, json={"prompt": "one two", "temperature": 0, "echo": True}).json()
    assert plain["choices"][0]["text"] == "one twoone two" and plain["choices"][0]["logprobs"] is None


def test_completions_stream_echo_logprobs_and_n(client):
    r = client.post(COMPLETIONS, json={"prompt": ["a b", "c"], "temperature": 0, "n": 2, "echo": True,
                                       "logprobs": 0, "stream": True, "stream_options": {"include_usage": True}})
    chunks = [e for e in sse_events(r.text) if e != "[DONE]"]
    text: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    offsets: dict[int, list[int]] = {}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        i = choice["index"]
        text[i] = text.get(i, "") + choice["text"]
        tokens.setdefault(i, []).extend(choice["logprobs"]["tokens"])
        offsets.setdefault(i, []).extend(choice["logprobs"]["text_offset"])
    assert text == {0: "a ba b", 1: "a ba b", 2: "cc", 3: "cc"}
    for i in range(4):
        assert "".join(tokens[i]) == text[i]
        assert offsets[i] == [sum(len(t) for t in tokens[i][:j]) for j in range(len(tokens[i]))]
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens"] == 3 and usage["completion_tokens"] == 2 * (3 + 2)


def test_completions_n_non_streaming_indexes_prompt_major(client):
    out = client.post(COMPLETIONS, json={"prompt": ["a b", "c"], "temperature": 0, "n": 2}).json()
    assert [(c["index"], c["text"]) for c in out["choices"]] == [(0, "a b"), (1, "a b"), (2, "c"), (3, "c")]
    assert out["usage"]["prompt_tokens"] == 3


# -- logit_bias ---------------------------------------------------------------------------------
def test_logit_bias_reaches_the_engine(client):
    tokens = client.post("/tokenize", json={"prompt": "zebra"}).json()["tokens"]
    out = client.post(CHAT, json=body(temperature=0, max_tokens=3, logit_bias={str(tokens[0]): 100})).json()
    assert out["choices"][0]["message"]["content"] == "zebrazebrazebra"


@pytest.mark.parametrize("bias, param", [({"x": 1}, "logit_bias"), ({"5": 101}, "logit_bias"),
                                         ({"5": -100.5}, "logit_bias")])
def test_logit_bias_bad_values(client, bias, param):
    assert_error(client.post(CHAT, json=body(logit_bias=bias)), 400, param=param)


class Claiming:
    """An engine claiming other capabilities than its own."""

    def __init__(self, engine, caps: Capabilities):
        self.engine, self.caps = engine, caps

    def __getattr__(self, name):
        return getattr(self.engine, name)

    @property
    def capabilities(self) -> Capabilities:
        return self.caps


def started_fake(caps: Capabilities) -> AsyncChatModel:
    model = AsyncChatModel(settings=ModelSettings(name="m", engine="fake"))
    asyncio.run(model.start())
    model.engine = Claiming(model.engine, caps)
    return model


def test_logit_bias_token_outside_the_vocabulary_is_400():
    model = started_fake(Capabilities(sampling=ALL_SAMPLING, max_context=100, vocab_size=10))
    with pytest.raises(InvalidRequest) as info:
        model.build_request([1, 2], SamplingParams(logit_bias=((10, 5.0),)))
    assert info.value.param == "logit_bias"
    assert model.build_request([1, 2], SamplingParams(logit_bias=((9, 5.0),)))


def test_an_engine_without_prompt_logprobs_rejects_echo_with_logprobs_naming_echo():
    model = started_fake(Capabilities(sampling=ALL_SAMPLING - {"prompt_logprobs"}, max_context=100))
    with pytest.raises(UnsupportedParameter) as info:
        model.build_request([1, 2], SamplingParams(logprobs=1, prompt_logprobs=1))
    assert info.value.param == "echo" and "echo" in info.value.message
    assert model.build_request([1, 2], SamplingParams(logprobs=1))  # generated-token logprobs are fine
