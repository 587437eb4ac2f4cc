"""/v1/completions, /v1/embeddings, /tokenize, /detokenize and several models, over fake engines."""

from __future__ import annotations

import base64
import json
import struct

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from llmserve.server.app import create_app
from llmserve.settings import Settings
from tests.conftest import app_client, fake_model, wait_healthy
from tests.server.test_chat_api import sse_events

COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"


@contextmanager
def settings_client(settings: Settings) -> Iterator[TestClient]:
    """An app over the models ``settings`` describes (``app_client`` would pass its own)."""
    with TestClient(create_app(settings)) as client:
        wait_healthy(client)
        yield client


def completion(**kw):
    return {"model": "fake-model", "temperature": 0, **kw}


# -- completions ----------------------------------------------------------------------------------
def test_completion_shape(client):
    r = client.post(COMPLETIONS, json=completion(prompt="once upon"))
    assert r.status_code == 200
    out = r.json()
    assert out["object"] == "text_completion"
    assert out["id"].startswith("cmpl-")
    assert out["model"] == "fake-model"
    # no chat template: the fake echoes the raw prompt it was given
    assert out["choices"] == [{"index": 0, "text": "once upon", "logprobs": None, "finish_reason": "stop"}]
    assert out["usage"]["prompt_tokens"] == 2
    assert out["usage"]["completion_tokens"] == 3
    assert out["usage"]["total_tokens"] == 5


def test_completion_prompt_list_and_max_tokens(client):
    out = client.post(COMPLETIONS, json=completion(prompt=["a b c", "d"], max_tokens=2)).json()
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert out["choices"][0] == {"index": 0, "text": "a b", "logprobs": None, "finish_reason": "length"}
    assert out["choices"][1]["text"] == "d" and out["choices"][1]["finish_reason"] == "stop"
    assert out["usage"]["prompt_tokens"] == 4 and out["usage"]["completion_tokens"] == 4


def test_completion_token_prompts(client):
    tokens = client.post("/tokenize", json={"prompt": "x y"}).json()["tokens"]
    out = client.post(COMPLETIONS, json=completion(prompt=tokens)).json()
    assert out["choices"][0]["text"] == "x y"
    out = client.post(COMPLETIONS, json=completion(prompt=[tokens, tokens[:1]])).json()
    assert [c["text"] for c in out["choices"]] == ["x y", "x"]


def test_completion_stream(client):
    r = client.post(COMPLETIONS, json=completion(prompt=["a b", "c"], stream=True,
                                                 stream_options={"include_usage": True}))
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    text = {0: "", 1: ""}
    finish = {}
    for c in chunks[:-1]:
        (choice,) = c["choices"]
        text[choice["index"]] += choice["text"]
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    assert text == {0: "a b", 1: "c"}
    assert finish == {0: "stop", 1: "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 3


def test_completion_errors(client):
    r = client.post(COMPLETIONS, json=completion(prompt=[]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = client.post(COMPLETIONS, json=completion(prompt="hi", n=9))  # more choices than slots
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = client.post(COMPLETIONS, json=completion(prompt="hi", max_tokens=100000))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded" and r.json()["error"]["param"] == "prompt"
    r = client.post(COMPLETIONS, json=completion(prompt="hi", model="nope"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_completion_engine_failure_mid_stream():
    with app_client(fake_model(fail_after=1)) as client:
        events = sse_events(client.post(COMPLETIONS, json=completion(prompt="a b c", stream=True)).text)
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "engine_error"


def test_completions_are_measured(client):
    from tests.server.test_metrics import scrape, value

    client.post(COMPLETIONS, json=completion(prompt=["a b", "c"]))
    assert value(scrape(client), "request_success_total", finished_reason="stop") == 2


# -- embeddings -----------------------------------------------------------------------------------
def test_embeddings_float(client):
    r = client.post(EMBEDDINGS, json={"model": "fake-model", "input": ["red apple", "red apple", "blue sky"]})
    assert r.status_code == 200
    out = r.json()
    assert out["object"] == "list" and out["model"] == "fake-model"
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in out["data"])
    a, b, c = (d["embedding"] for d in out["data"])
    assert a == b and a != c
    assert abs(sum(x * x for x in a) - 1) < 1e-6  # unit length, as OpenAI's
    assert out["usage"] == {"prompt_tokens": 6, "total_tokens": 6}


def test_embeddings_base64_matches_float(client):
    floats = client.post(EMBEDDINGS, json={"input": "red apple"}).json()["data"][0]["embedding"]
    encoded = client.post(EMBEDDINGS, json={"input": "red apple", "encoding_format": "base64"}).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == len(floats)
    assert all(abs(x - y) < 1e-6 for x, y in zip(decoded, floats))


def test_embeddings_errors(client):
    assert client.post(EMBEDDINGS, json={"input": []}).status_code == 400
    assert client.post(EMBEDDINGS, json={"input": ["ok", ""]}).status_code == 400
    r = client.post(EMBEDDINGS, json={"input": "x", "dimensions": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    assert client.post(EMBEDDINGS, json={"input": "x", "encoding_format": "int8"}).status_code == 400


def test_embeddings_with_the_openai_client(client):
    import openai

    oa = openai.OpenAI(base_url=str(client.base_url) + "/v1", api_key="x", http_client=client)
    out = oa.embeddings.create(model="fake-model", input=["red apple", "blue sky"])  # base64 by default
    assert len(out.data) == 2 and len(out.data[0].embedding) == 16


# -- tokenize -------------------------------------------------------------------------------------
def test_tokenize_prompt_and_detokenize(client):
    out = client.post("/tokenize", json={"model": "fake-model", "prompt": "hello world"}).json()
    assert out["count"] == 2 and len(out["tokens"]) == 2
    assert out["max_model_len"] == 2048
    back = client.post("/detokenize", json={"model": "fake-model", "tokens": out["tokens"]}).json()
    assert back == {"prompt": "hello world"}


def test_tokenize_messages_uses_the_chat_template(client):
    msgs = [{"role": "user", "content": "hi"}]
    with_prompt = client.post("/tokenize", json={"messages": msgs, "return_token_strs": True}).json()
    without = client.post("/tokenize", json={"messages": msgs, "add_generation_prompt": False}).json()
    assert with_prompt["count"] > without["count"]
    assert "".join(with_prompt["token_strs"]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # the same count the chat endpoint reports as prompt tokens
    usage = client.post("/v1/chat/completions", json={"messages": msgs}).json()["usage"]
    assert usage["prompt_tokens"] == with_prompt["count"]


def test_tokenize_errors(client):
    assert client.post("/tokenize", json={"prompt": "x", "messages": []}).status_code == 400
    r = client.post("/detokenize", json={"tokens": [10**6]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    assert client.post("/tokenize", json={"model": "nope", "prompt": "x"}).status_code == 404


def test_tokenize_needs_the_api_key():
    with app_client(fake_model(), settings=Settings(api_keys=["k"])) as client:
        assert client.post("/tokenize", json={"prompt": "x"}).status_code == 401
        r = client.post("/tokenize", json={"prompt": "x"}, headers={"Authorization": "Bearer k"})
        assert r.status_code == 200
        assert client.get("/metrics").status_code == 200  # scrapers need no key, as /health


# -- several models ---------------------------------------------------------------------------------
def test_two_models_route_by_name():
    with app_client(fake_model("alpha", reply="from alpha"), fake_model("beta", reply="from beta")) as client:
        ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert ids == ["alpha", "beta"]
        for name in ids:
            chat = client.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "?"}]})
            assert chat.json()["model"] == name
            assert chat.json()["choices"][0]["message"]["content"] == f"from {name}"
            comp = client.post(COMPLETIONS, json={"model": name, "prompt": "?"}).json()
            assert comp["choices"][0]["text"] == f"from {name}"
        r = client.post("/v1/chat/completions", json={"model": "gamma", "messages": [{"role": "user", "content": "?"}]})
        assert r.status_code == 404
        assert r.json()["error"] == {"message": "The model 'gamma' does not exist", "type": "invalid_request_error",
                                     "param": "model", "code": "model_not_found"}


def test_models_from_a_yaml_config(tmp_path):
    config = tmp_path / "llmserve.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "models": [
            {"name": "small", "engine": "fake", "options": {"reply": "small one", "max_context": 512}},
            {"name": "large", "engine": "fake", "parallel": 2, "options": {"reply": "large one"}},
        ],
    }))
    settings = Settings.load({}, config)
    assert [m.served_name() for m in settings.model_list()] == ["small", "large"]
    with settings_client(settings) as client:
        cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert set(cards) == {"small", "large"}
        assert cards["small"]["max_model_len"] == 512 and cards["large"]["max_model_len"] == 2048
        out = client.post(COMPLETIONS, json={"model": "large", "prompt": "?"}).json()
        assert out["choices"][0]["text"] == "large one"
        health = client.get("/health").json()
        assert set(health["models"]) == {"small", "large"}
        metrics = client.get("/metrics").text
        assert 'model_name="small"' in metrics and 'model_name="large"' in metrics


def test_yaml_config_file_with_yaml_syntax(tmp_path):
    config = tmp_path / "models.yml"
    config.write_text(
        "models:\n"
        "  - name: one\n    engine: fake\n    options: {reply: uno}\n"
        "  - name: two\n    engine: fake\n    options: {reply: dos}\n"
    )
    with settings_client(Settings.load({}, config)) as client:
        texts = [client.post(COMPLETIONS, json={"model": m, "prompt": "?"}).json()["choices"][0]["text"]
                 for m in ("one", "two")]
        assert texts == ["uno", "dos"]
