"""WS /ws and WS /v1/chat/ws over the fake engine: streaming, interleaving, cancel, errors, auth."""

from __future__ import annotations

import pytest
from starlette.testclient import WebSocketDenialResponse

from llmserve.settings import Settings
from tests.conftest import app_client, fake_model
from tests.server.test_simple_api import wait_until

LONG = " ".join(f"w{i}" for i in range(200))


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def simple_reply(ws) -> tuple[str, dict]:
    """Token texts joined, and the final message (end or error) of one /ws prompt."""
    parts = []
    while True:
        msg = ws.receive_json()
        if msg["type"] != "token":
            return "".join(parts), msg
        parts.append(msg["text"])


def chat_until_final(ws, req_id) -> tuple[str, dict, list[dict]]:
    """Content of one /v1/chat/ws request, its final message (done or error), and every message seen."""
    seen, parts = [], []
    while True:
        msg = ws.receive_json()
        seen.append(msg)
        if msg.get("id") != req_id:
            continue
        if msg["type"] == "chunk":
            parts.append(msg["chunk"]["choices"][0]["delta"].get("content") or "")
        else:
            return "".join(parts), msg, seen


# -- /ws --------------------------------------------------------------------------------------------
def test_ws_text_and_json_prompts_on_one_socket(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_text("hello there")  # plain text: default sampling (the fake engine samples words)
        text, end = simple_reply(ws)
        assert text and end["type"] == "end" and end["finish_reason"] == "stop"
        ws.send_text('{"text": "one two three", "temperature": 0, "max_tokens": 2}')
        text, end = simple_reply(ws)
        assert text == "one two"
        assert end == {"type": "end", "finish_reason": "length",
                       "usage": {"prompt_tokens": end["usage"]["prompt_tokens"], "completion_tokens": 2,
                                 "total_tokens": end["usage"]["prompt_tokens"] + 2}}
        ws.send_text('{"messages": [{"role": "user", "content": "alpha beta"}], "temperature": 0}')
        assert simple_reply(ws)[0] == "alpha beta"


def test_ws_errors_are_messages_and_socket_stays_open(make_client):
    with make_client(fake_model(reply="one two three four", fail_after=2)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text('{"text": "x", "temperature": 9}')
            _, err = simple_reply(ws)
            assert err["type"] == "error" and err["status"] == 400
            assert err["error"]["param"] == "temperature"
            ws.send_text('{"text": "x", "model": "nope"}')
            assert simple_reply(ws)[1]["error"]["code"] == "model_not_found"
            ws.send_text("go")
            text, err = simple_reply(ws)
            assert text == "one two"
            assert err["error"]["code"] == "engine_error" and err["status"] == 500


def test_ws_prompts_sent_during_an_answer_wait_their_turn(make_client):
    with make_client(fake_model(token_delay=0.005)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text('{"text": "first answer here", "temperature": 0}')
            ws.send_text('{"text": "second", "temperature": 0}')
            assert simple_reply(ws)[0] == "first answer here"
            assert simple_reply(ws)[0] == "second"


def test_ws_close_aborts_generation(make_client):
    model = fake_model(reply=LONG, token_delay=0.01)
    with make_client(model) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("go")
            assert ws.receive_json()["type"] == "token"
            assert model.engine.stats().running == 1
        wait_until(lambda: model.engine.stats().running == 0, 1.0)  # 200 tokens would take 2 s


# -- auth on both sockets ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/ws", "/v1/chat/ws"])
def test_ws_auth(path):
    with app_client(fake_model(), settings=Settings(api_keys=["k1"])) as client:
        for kw in ({}, {"headers": {"authorization": "Bearer wrong"}}):
            with pytest.raises(WebSocketDenialResponse) as denied:
                with client.websocket_connect(path, **kw):
                    pass
            assert denied.value.status_code == 401
            assert denied.value.json()["error"]["code"] == "invalid_api_key"
        for url, kw in ((path, {"headers": {"authorization": "Bearer k1"}}),
                        (path, {"headers": {"x-api-key": "k1"}}),
                        (path + "?api_key=k1", {})):
            with client.websocket_connect(url, **kw) as ws:
                if path == "/ws":
                    ws.send_text('{"text": "ok", "temperature": 0}')
                    assert simple_reply(ws)[0] == "ok"
                else:
                    ws.send_json({"type": "request", "id": "a", "messages": user("ok"), "temperature": 0})
                    assert chat_until_final(ws, "a")[0] == "ok"


# -- /v1/chat/ws ------------------------------------------------------------------------------------
def test_chat_ws_one_request(client):
    with client.websocket_connect("/v1/chat/ws") as ws:
        ws.send_json({"type": "request", "id": "r1", "model": "fake-model", "messages": user("hello there"),
                      "temperature": 0})
        text, done, seen = chat_until_final(ws, "r1")
    chunks = [m["chunk"] for m in seen if m["type"] == "chunk"]
    assert all(m["id"] == "r1" for m in seen)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "fake-model" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert text == "hello there"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert done["type"] == "done" and done["finish_reason"] == "stop"
    assert done["usage"]["completion_tokens"] == 3
    assert done["usage"]["total_tokens"] == done["usage"]["prompt_tokens"] + 3


def test_chat_ws_interleaved_requests_and_cancel(make_client):
    model = fake_model(token_delay=0.01)
    with make_client(model) as client:
        with client.websocket_connect("/v1/chat/ws") as ws:
            ws.send_json({"type": "request", "id": "long", "messages": user(LONG), "temperature": 0})
            ws.send_json({"type": "request", "id": 7, "messages": user("a b c d e f"), "temperature": 0})
            text, done, seen = chat_until_final(ws, 7)
            assert text == "a b c d e f" and done["type"] == "done" and done["finish_reason"] == "stop"
            # both were streaming at once: chunks of "long" came before and while 7 streamed
            order = [m["id"] for m in seen if m["type"] == "chunk"]
            first_7, last_7 = order.index(7), len(order) - 1 - order[::-1].index(7)
            assert "long" in order[:first_7] and "long" in order[first_7:last_7]
            assert model.engine.stats().running == 1  # "long" still going

            ws.send_json({"type": "cancel", "id": "long"})
            rest, final, _ = chat_until_final(ws, "long")
            assert final["type"] == "done" and final["finish_reason"] == "cancelled"
            assert 0 < final["usage"]["completion_tokens"] < 200
            text = "".join(m["chunk"]["choices"][0]["delta"].get("content") or ""
                           for m in seen if m["id"] == "long" and m["type"] == "chunk") + rest
            assert LONG.startswith(text) and len(text) < len(LONG)
            assert model.engine.stats().running == 0  # aborted at once

            # the socket goes on; a cancel for an id no longer in flight is ignored
            ws.send_json({"type": "cancel", "id": "long"})
            ws.send_json({"type": "request", "id": "after", "messages": user("still here"), "temperature": 0})
            text, done, seen = chat_until_final(ws, "after")
            assert text == "still here"
            assert all(m["id"] == "after" for m in seen)  # nothing more for "long"


def test_chat_ws_errors_are_messages(make_client):
    with make_client(fake_model(reply="one two three four", fail_after=2, token_delay=0.01)) as client:
        with client.websocket_connect("/v1/chat/ws") as ws:
            ws.send_text("{not json")
            err = ws.receive_json()
            assert err["type"] == "error" and err["id"] is None and err["status"] == 400
            ws.send_text("[1, 2]")
            assert ws.receive_json()["error"]["type"] == "invalid_request_error"
            ws.send_json({"type": "request", "messages": user("x")})
            assert ws.receive_json()["error"]["param"] == "id"
            ws.send_json({"type": "frobnicate", "id": "f"})
            err = ws.receive_json()
            assert err["id"] == "f" and err["error"]["param"] == "type"
            ws.send_json({"type": "request", "id": "t", "messages": user("x"), "temperature": 9})
            err = ws.receive_json()
            assert err["id"] == "t" and err["status"] == 400 and err["error"]["param"] == "temperature"
            ws.send_json({"type": "request", "id": "m", "messages": user("x"), "model": "nope"})
            err = ws.receive_json()
            assert err["id"] == "m" and err["status"] == 404 and err["error"]["code"] == "model_not_found"
            ws.send_json({"type": "request", "id": "n", "messages": user("x"), "n": 2})
            assert ws.receive_json()["error"]["code"] == "unsupported_parameter"
            ws.send_json({"type": "request", "id": "tl", "messages": user("x"),
                          "tools": [{"type": "function", "function": {"name": "f"}}]})
            err = ws.receive_json()
            assert err["id"] == "tl" and err["status"] == 400 and err["error"]["param"] == "tools"
            # structured output reaches the engine (the fake one honours none): never silently ignored
            ws.send_json({"type": "request", "id": "j", "messages": user("x"), "response_format": {"type": "json_object"}})
            assert ws.receive_json()["error"]["param"] == "response_format"

            ws.send_json({"type": "request", "id": "dup", "messages": user("x")})
            ws.send_json({"type": "request", "id": "dup", "messages": user("x")})
            text, final, seen = chat_until_final(ws, "dup")
            if final["type"] == "error" and "already in flight" in final["error"]["message"]:
                text, final, _ = chat_until_final(ws, "dup")
            else:
                assert any("already in flight" in m.get("error", {}).get("message", "") for m in seen)
            # the engine fails after two tokens: an error for that id, after its chunks
            assert text == "one two"
            assert final["type"] == "error" and final["error"]["code"] == "engine_error"
            ws.send_json({"type": "request", "id": "ok", "messages": user("x"), "max_tokens": 1})
            assert chat_until_final(ws, "ok")[1]["type"] == "done"


def test_chat_ws_close_aborts_every_generation(make_client):
    model = fake_model(reply=LONG, token_delay=0.01)
    with make_client(model) as client:
        with client.websocket_connect("/v1/chat/ws") as ws:
            for i in range(3):
                ws.send_json({"type": "request", "id": i, "messages": user("x")})
            wait_until(lambda: model.engine.stats().running == 3, 1.0)
        wait_until(lambda: model.engine.stats().running == 0, 1.0)


def test_chat_ws_rate_limited_request_is_an_error_message():
    with app_client(fake_model(), settings=Settings(api_keys=["k"], rate_limit_rpm=1)) as client:
        with client.websocket_connect("/v1/chat/ws?api_key=k") as ws:
            ws.send_json({"type": "request", "id": 1, "messages": user("x"), "max_tokens": 1})
            assert chat_until_final(ws, 1)[1]["type"] == "done"
            ws.send_json({"type": "request", "id": 2, "messages": user("x")})
            err = ws.receive_json()
            assert err["id"] == 2 and err["status"] == 429 and err["error"]["code"] == "rate_limit_exceeded"
            assert err["retry_after"] >= 1


def test_chat_ws_over_a_real_socket():
    """uvicorn + the websockets client: 401 at the handshake, streaming, abort when the socket closes."""
    import json

    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from llmserve.server.app import create_app
    from tests.conftest import ThreadServer, free_port

    model = fake_model(token_delay=0.01)
    with ThreadServer(create_app(Settings(api_keys=["k"]), models=[model]), free_port()) as server:
        url = server.url.replace("http://", "ws://") + "/v1/chat/ws"
        with pytest.raises(InvalidStatus) as denied:
            connect(url, additional_headers={"Authorization": "Bearer nope"})
        assert denied.value.response.status_code == 401
        assert json.loads(bytes(denied.value.response.body))["error"]["type"] == "authentication_error"

        with connect(url, additional_headers={"Authorization": "Bearer k"}) as ws:
            ws.send(json.dumps({"type": "request", "id": "q", "messages": user("hello real socket"),
                                "temperature": 0}))
            parts = []
            while (msg := json.loads(ws.recv()))["type"] == "chunk":
                parts.append(msg["chunk"]["choices"][0]["delta"].get("content") or "")
            assert msg["type"] == "done" and "".join(parts) == "hello real socket"
            ws.send(json.dumps({"type": "request", "id": "long", "messages": user(LONG), "temperature": 0}))
            assert json.loads(ws.recv())["id"] == "long"
            assert model.engine.stats().running == 1
        wait_until(lambda: model.engine.stats().running == 0, 1.0)
