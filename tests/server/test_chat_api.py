"""/v1/chat/completions over the fake engine: every shape and status code, in milliseconds."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.conftest import app_client, fake_model

CHAT = "/v1/chat/completions"


def body(**kw):
    return {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}], **kw}


def sse_events(text: str) -> list:
    events = []
    for block in text.strip().split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: "):]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_chat_completion_shape(client):
    r = client.post(CHAT, json=body(temperature=0))
    assert r.status_code == 200
    out = r.json()
    assert out["object"] == "chat.completion"
    assert out["id"].startswith("chatcmpl-")
    assert isinstance(out["created"], int)
    assert out["model"] == "fake-model"
    choice = out["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "hello there"}
    assert choice["finish_reason"] == "stop"
    usage = out["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 3  # "hello", " there", EOS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_gives_length(client):
    out = client.post(CHAT, json=body(temperature=0, max_tokens=1)).json()
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["choices"][0]["message"]["content"] == "hello"
    assert out["usage"]["completion_tokens"] == 1


def test_max_completion_tokens_wins(client):
    out = client.post(CHAT, json=body(temperature=0, max_tokens=5, max_completion_tokens=1)).json()
    assert out["usage"]["completion_tokens"] == 1


def test_streaming_chunks_role_first_and_done(client):
    r = client.post(CHAT, json=body(temperature=0, stream=True))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "hello there"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks)


def test_stream_include_usage(client):
    r = client.post(CHAT, json=body(temperature=0, stream=True, stream_options={"include_usage": True}))
    chunks = sse_events(r.text)[:-1]
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 3
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 3


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_never_emitted_even_split_across_tokens(make_client, stream):
    # the fake engine streams word by word: "alpha", " beta", "gam", "ma" is not possible, so use a
    # stop string that spans two tokens: " beta gamma" arrives as " beta" then " gamma"
    with make_client(fake_model(reply="alpha beta gamma delta")) as client:
        r = client.post(CHAT, json=body(stream=stream, stop=["a gam", "zzz"]))
        if stream:
            chunks = sse_events(r.text)[:-1]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            finish = chunks[-1]["choices"][0]["finish_reason"]
        else:
            text = r.json()["choices"][0]["message"]["content"]
            finish = r.json()["choices"][0]["finish_reason"]
    assert text == "alpha bet"
    assert finish == "stop"


def test_stop_prefix_that_does_not_complete_is_released(make_client):
    with make_client(fake_model(reply="alpha beta")) as client:
        out = client.post(CHAT, json=body(stop="beta gamma")).json()
    assert out["choices"][0]["message"]["content"] == "alpha beta"


def test_seed_makes_sampling_repeatable(client):
    a = client.post(CHAT, json=body(temperature=0.9, seed=7)).json()["choices"][0]["message"]["content"]
    b = client.post(CHAT, json=body(temperature=0.9, seed=7)).json()["choices"][0]["message"]["content"]
    c = client.post(CHAT, json=body(temperature=0.9, seed=8)).json()["choices"][0]["message"]["content"]
    assert a == b
    assert a != c


def test_models_list(client):
    out = client.get("/v1/models").json()
    assert out["object"] == "list"
    card = out["data"][0]
    assert card["id"] == "fake-model" and card["object"] == "model" and card["owned_by"] == "llmserve"
    assert "temperature" in card["capabilities"]["sampling"]


def test_health_ok(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_health_503_while_loading():
    with app_client(fake_model(load_delay=0.5), wait=False) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = client.post(CHAT, json=body())
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_loading"
        assert "retry-after" in r.headers
        time.sleep(0.7)
        assert client.get("/health").status_code == 200


def assert_error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


def test_malformed_json_is_400(client):
    r = client.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 400)


@pytest.mark.parametrize(
    "payload,param",
    [
        ({"model": "fake-model"}, "messages"),
        (body(messages=[]), "messages"),
        (body(temperature=5), "temperature"),
        (body(top_p=0), "top_p"),
        (body(max_tokens=0), "max_tokens"),
        (body(messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
        (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), None),
        (body(frobnicate=1), "frobnicate"),
        (body(stream_options={"include_usage": True}), None),
    ],
)
def test_schema_violations_are_400(client, payload, param):
    err = assert_error(client.post(CHAT, json=payload), 400)
    if param is not None:
        assert err["param"] == param


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
    ],
)
def test_unsupported_parameters_named(client, extra, param):
    err = assert_error(client.post(CHAT, json=body(**extra)), 400, param=param, code="unsupported_parameter")
    assert param in err["message"]


@pytest.mark.parametrize("extra,param", [
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_regex"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "nope": 1}}}, None),
    ({"structured_outputs": {"regex": "a"}}, "response_format"),  # the fake engine honours no constraint
])
def test_bad_or_unhonoured_constraints_are_400(client, extra, param):
    err = assert_error(client.post(CHAT, json=body(**extra)), 400, param=param)
    if param is None:
        assert "nope" in err["message"] or err["param"] and "nope" in err["param"]


def test_defaults_of_unsupported_parameters_are_fine(client):
    r = client.post(CHAT, json=body(n=1, logprobs=False, response_format={"type": "text"}, tool_choice="none"))
    assert r.status_code == 200


def test_unknown_model_404(client):
    assert_error(client.post(CHAT, json=body(model="nope")), 404, param="model", code="model_not_found")


def test_context_overflow_400(make_client):
    with make_client(fake_model(max_context=16)) as client:
        long = " ".join(["word"] * 40)
        err = assert_error(client.post(CHAT, json=body(messages=[{"role": "user", "content": long}])), 400,
                           code="context_length_exceeded")
        assert "maximum context length is 16" in err["message"]
        # prompt fits, but prompt + max_tokens does not
        assert_error(client.post(CHAT, json=body(max_tokens=100)), 400, code="context_length_exceeded")
        assert client.post(CHAT, json=body(stream=True, max_tokens=100)).status_code == 400


def test_body_too_large_413():
    from llmserve.settings import Settings

    with app_client(fake_model(), settings=Settings(max_request_bytes=2048)) as client:
        big = body(messages=[{"role": "user", "content": "x" * 5000}])
        assert_error(client.post(CHAT, json=big), 413, code="request_too_large")
        assert client.post(CHAT, json=body()).status_code == 200


def test_engine_failure_500_and_server_stays_up(make_client):
    with make_client(fake_model(fail_after=0)) as client:
        assert_error(client.post(CHAT, json=body()), 500, code="engine_error")
        assert client.get("/health").status_code == 200


def test_failure_mid_stream_is_an_error_event_then_done(make_client):
    with make_client(fake_model(reply="one two three four", fail_after=2)) as client:
        r = client.post(CHAT, json=body(stream=True))
        assert r.status_code == 200
        events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "engine_error"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if "choices" in e)
    assert text == "one two"


def test_request_id_in_and_out(client):
    r = client.post(CHAT, json=body(), headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert client.get("/health").headers["x-request-id"]


def test_unknown_route_is_openai_shaped_404(client):
    assert_error(client.get("/v1/nothing"), 404)


def test_queue_full_503_with_retry_after(make_client):
    with make_client(fake_model(reply="a b c d e f g h", token_delay=0.05, parallel=1, max_queue=0)) as client:
        results = {}

        def first():
            results["first"] = client.post(CHAT, json=body())

        t = threading.Thread(target=first)
        t.start()
        time.sleep(0.1)
        for stream in (False, True):
            r = client.post(CHAT, json=body(stream=stream))
            assert_error(r, 503, code="overloaded")
            assert int(r.headers["retry-after"]) >= 1
        t.join()
        assert results["first"].status_code == 200


def test_queue_timeout_503(make_client):
    with make_client(fake_model(reply="a b c d e f g h", token_delay=0.1, parallel=1, queue_timeout=0.2)) as client:
        t = threading.Thread(target=lambda: client.post(CHAT, json=body()))
        t.start()
        time.sleep(0.05)
        assert_error(client.post(CHAT, json=body()), 503, code="queue_timeout")
        t.join()


def test_api_keys_401_openai_shaped():
    from llmserve.settings import Settings

    with app_client(fake_model(), settings=Settings(api_keys=["k1", "k2"])) as client:
        assert_error(client.post(CHAT, json=body()), 401, code="invalid_api_key")
        assert_error(client.post(CHAT, json=body(), headers={"authorization": "Bearer nope"}), 401)
        assert client.post(CHAT, json=body(), headers={"authorization": "Bearer k2"}).status_code == 200
        assert client.get("/v1/models", headers={"x-api-key": "k1"}).status_code == 200
        assert client.get("/health").status_code == 200  # stays open


def test_null_means_default_for_optional_parameters(client):
    r = client.post(CHAT, json=body(temperature=None, top_p=None, n=None, presence_penalty=None, stream=None))
    assert r.status_code == 200, r.text
    assert client.post(CHAT, json=body(messages=None)).status_code == 400  # required: null is not allowed


def test_lone_surrogates_do_not_crash(client):
    raw = b'{"messages": [{"role": "user", "content": "x \\ud800 y"}], "temperature": 0}'
    r = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200
