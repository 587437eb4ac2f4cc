"""POST /chat and POST /chat_stream over the fake engine (and one real socket for streaming)."""

from __future__ import annotations

import json

import httpx
import pytest

from llmserve.server.app import create_app
from llmserve.settings import Settings
from tests.conftest import ThreadServer, app_client, fake_model, free_port
from tests.server.test_chat_api import assert_error


def sse_events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) pairs; the default event name is 'message'."""
    events = []
    for block in text.strip().split("\n\n"):
        name, data = "message", None
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data = json.loads(value)
        events.append((name, data))
    return events


def test_chat_text(client):
    r = client.post("/chat", json={"text": "hello there", "temperature": 0})
    assert r.status_code == 200
    out = r.json()
    assert out["result"] == "hello there"
    assert out["finish_reason"] == "stop"
    assert out["model"] == "fake-model"
    usage = out["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + 3


def test_chat_messages_and_sampling_fields(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three"}]
    out = client.post("/chat", json={"messages": messages, "temperature": 0, "max_tokens": 2}).json()
    assert out["result"] == "one two"
    assert out["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 2
    out = client.post("/chat", json={"text": "alpha beta gamma", "temperature": 0, "stop": " gamma"}).json()
    assert out["result"] == "alpha beta"


def test_chat_seeded_sampling_is_repeatable(client):
    a = client.post("/chat", json={"text": "x", "temperature": 0.8, "seed": 3}).json()["result"]
    b = client.post("/chat", json={"text": "x", "temperature": 0.8, "seed": 3}).json()["result"]
    assert a == b


@pytest.mark.parametrize("payload,param", [
    ({}, None),
    ({"text": "a", "messages": [{"role": "user", "content": "b"}]}, None),
    ({"messages": []}, "messages"),
    ({"text": "a", "temperature": 9}, "temperature"),
    ({"text": "a", "tools": []}, "tools"),
])
def test_chat_bad_bodies_are_400(client, payload, param):
    for path in ("/chat", "/chat_stream"):
        err = assert_error(client.post(path, json=payload), 400)
        if param is not None:
            assert err["param"] == param


def test_chat_unknown_model_404_and_engine_failure_500(make_client):
    with make_client(fake_model(fail_after=0)) as client:
        assert_error(client.post("/chat", json={"text": "a", "model": "nope"}), 404, code="model_not_found")
        assert_error(client.post("/chat", json={"text": "a"}), 500, code="engine_error")
        assert_error(client.post("/chat_stream", json={"text": "a"}), 500, code="engine_error")


def test_chat_stream_events(client):
    r = client.post("/chat_stream", json={"text": "hello there friend", "temperature": 0})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    tokens = [data["text"] for name, data in events if name == "message"]
    assert tokens == ["hello", " there", " friend"]  # one event per token piece
    name, end = events[-1]
    assert name == "end"
    assert end["finish_reason"] == "stop"
    assert end["usage"]["completion_tokens"] == 4


def test_chat_stream_failure_after_start_is_error_then_end(make_client):
    with make_client(fake_model(reply="one two three four", fail_after=2)) as client:
        r = client.post("/chat_stream", json={"text": "x"})
        assert r.status_code == 200
        events = sse_events(r.text)
    assert [d["text"] for n, d in events if n == "message"] == ["one", " two"]
    assert events[-2][0] == "error" and events[-2][1]["error"]["code"] == "engine_error"
    assert events[-1] == ("end", {"finish_reason": None, "usage": None})


def test_chat_stream_is_real_streaming():
    """The first token reaches the client while the engine is still generating the rest."""
    model = fake_model(reply=" ".join(f"w{i}" for i in range(20)), token_delay=0.05)
    with ThreadServer(create_app(Settings(), models=[model]), free_port()) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            with http.stream("POST", "/chat_stream", json={"text": "go"}) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                assert json.loads(first[len("data: "):]) == {"text": "w0"}
                assert model.engine.stats().running == 1  # still generating
                rest = "\n".join(lines)
    assert "event: end" in rest and '"text": " w19"' in rest


def test_chat_stream_client_gone_aborts_generation():
    model = fake_model(reply=" ".join(["w"] * 400), token_delay=0.01)
    with ThreadServer(create_app(Settings(), models=[model]), free_port()) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            with http.stream("POST", "/chat_stream", json={"text": "go"}) as r:
                lines = r.iter_lines()  # keep the iterator: dropping it closes the response
                assert next(lines).startswith("data: ")
                assert model.engine.stats().running == 1
        wait_until(lambda: model.engine.stats().running == 0, 2.0)  # 400 tokens would take 4 s


def wait_until(predicate, timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_simple_routes_need_keys_when_configured():
    with app_client(fake_model(), settings=Settings(api_keys=["k1"])) as client:
        assert_error(client.post("/chat", json={"text": "a"}), 401, code="invalid_api_key")
        assert_error(client.post("/chat_stream", json={"text": "a"}, headers={"x-api-key": "bad"}), 401)
        assert client.post("/chat", json={"text": "a"}, headers={"authorization": "Bearer k1"}).status_code == 200
        assert client.get("/health").status_code == 200
