"""What cannot fit is refused early and cheaply, with the right OpenAI-shaped 400; the CPU work of
requests runs in the app's one bounded pool (fake engine)."""

from __future__ import annotations

import json
import threading

import pytest

from llmserve.server.body import nesting_depth_over, scan_object
from llmserve.errors import ContextLengthExceeded
from llmserve.settings import Settings
from tests.conftest import app_client, fake_model

CHAT = "/v1/chat/completions"


def post(client, path, body: bytes):
    return client.post(path, content=body, headers={"content-type": "application/json"})


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_more_messages_than_the_context_holds_is_context_length_exceeded_before_validation():
    # max_context 2048: 3000 messages cannot fit, however short; the body is far above the inline size
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}] * 3000}).encode()
    with app_client(fake_model()) as client:
        err = error_of(post(client, CHAT, body), 400)
        ok = client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}] * 100, "max_tokens": 4})
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert "more than 2048 messages" in err["message"]
    assert ok.status_code == 200


@pytest.mark.parametrize("path", [CHAT, "/chat"])
def test_more_characters_than_the_context_could_hold_is_refused_before_tokenizing(path):
    # the fake engine's tokens stand for 32 characters at most: 100,000 characters are 3,125 tokens
    # at least, over its 2048; the engine's tokenizer is never called on them
    with app_client(fake_model()) as client:
        engine = client.app.state.registry.models["fake-model"].engine
        calls = []
        tokenize = engine.tokenize
        engine.tokenize = lambda *a, **k: calls.append(a) or tokenize(*a, **k)
        err = error_of(client.post(path, json={"messages": [{"role": "user", "content": "x " * 50_000}]}), 400)
    assert err["code"] == "context_length_exceeded" and "messages need at least 3125" in err["message"]
    assert calls == []


def test_json_nested_deeper_than_the_limit_is_400():
    with app_client(fake_model(), settings=Settings(max_json_depth=16)) as client:
        shallow = {"messages": [{"role": "user", "content": "hi"}], "metadata": {"a": [[["x"]]]}}
        deep = b'{"messages": [{"role": "user", "content": "hi"}], "stop": ' + b"[" * 20 + b"]" * 20 + b"}"
        very_deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # past Python's recursion limit
        assert "nests deeper than 16" in error_of(post(client, CHAT, deep), 400)["message"]
        assert "nests deeper than 16" in error_of(post(client, CHAT, very_deep), 400)["message"]
        assert client.post(CHAT, json=shallow).status_code in (200, 400)  # judged by the schema, not the depth
        assert error_of(post(client, CHAT, b"{not json" + b" " * 20_000), 400)["message"] == \
            "the request body is not valid JSON"


def test_nesting_depth():
    assert not nesting_depth_over({"a": [1, {"b": []}]}, 4)  # object, array, object, array
    assert nesting_depth_over({"a": [1, {"b": []}]}, 3)
    assert not nesting_depth_over("text", 1)


def test_websocket_frames_are_bounded_like_bodies():
    with app_client(fake_model(), settings=Settings(max_json_depth=16)) as client:
        with client.websocket_connect("/v1/chat/ws") as ws:
            ws.send_text('{"id": 1, "messages": ' + "[" * 50 + "]" * 50 + "}")
            deep = ws.receive_json()
            ws.send_text(json.dumps({"id": 2, "messages": [{"role": "user", "content": "hi"}] * 3000}))
            many = ws.receive_json()
    assert deep["type"] == "error" and "nests deeper" in deep["error"]["message"]
    assert many["type"] == "error" and many["error"]["code"] == "context_length_exceeded"


def test_cpu_work_runs_in_the_apps_pool_not_on_the_event_loop():
    with app_client(fake_model()) as client:
        model = client.app.state.registry.models["fake-model"]
        pool = client.app.state.work_pool
        assert model.pool is pool
        threads = []
        render = model.render
        model.render = lambda *a, **k: threads.append(threading.current_thread().name) or render(*a, **k)
        assert client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        assert client.post("/chat", json={"text": "hi"}).status_code == 200
    assert len(threads) == 2 and all(name.startswith("llmserve-cpu") for name in threads)


def test_a_full_pool_backlog_is_503():
    with app_client(fake_model(), settings=Settings(cpu_workers=1, cpu_queue=1)) as client:
        pool = client.app.state.work_pool
        gate = threading.Event()
        client.portal.call(lambda: _occupy(pool, gate))  # one job holds the only place
        try:
            r = client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
        finally:
            gate.set()
    err = error_of(r, 503)
    assert err["code"] == "overloaded" and r.headers["retry-after"]


async def _occupy(pool, gate: threading.Event) -> None:
    import asyncio

    asyncio.ensure_future(pool.run(gate.wait, 10))
    await asyncio.sleep(0.05)


@pytest.mark.parametrize("text", [
    '{}', ' { } ', '{"a": 1, "b": [1, 2, {"c": [3]}], "a": 2}', '{"messages": [], "x": "y"}',
    '{"messages": [ {"role": "user", "content": "hi"} , {"role": "user", "content": "\\u00e9"} ] }',
    '[1, 2]', '"text"', '{"n": NaN, "l": [[], [[]]]}',
])
def test_scan_object_reads_as_json_loads(text):
    assert json.dumps(scan_object(text, 10)) == json.dumps(json.loads(text))


@pytest.mark.parametrize("text", ['{"a": 1,}', '{"a" 1}', '{"a": [1 2]}', '{"a": 1} x', '{1: 2}', '{"a": [1,]}', '{'])
def test_scan_object_refuses_what_json_loads_refuses(text):
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        scan_object(text, 10)


def test_scan_object_stops_reading_messages_past_the_limit():
    text = '{"messages": [' + ", ".join(['{"role": "user", "content": "hi"}'] * 5) + '], "x": [1,'  # broken after
    with pytest.raises(ContextLengthExceeded):
        scan_object(text, 4)
