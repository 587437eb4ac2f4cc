"""Tool calling on the wire, over the fake engine (scripted replies): shapes, streaming deltas, 400s."""

from __future__ import annotations

import json

import pytest

from tests.conftest import app_client, fake_model
from tests.server.test_chat_api import CHAT, assert_error, sse_events

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
NOW = {"type": "function", "function": {"name": "now"}}
USER = [{"role": "user", "content": "Weather in Paris?"}]
CALLS = ('<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
         '{"name": "now", "arguments": {}}]</tool_call>')


def chat(**kw):
    return {"model": "fake-model", "messages": USER, "tools": [WEATHER, NOW], "temperature": 0, **kw}


def stream_result(client, payload):
    """The streamed answer reassembled as the openai SDK does, and its raw chunks."""
    r = client.post(CHAT, json={**payload, "stream": True})
    assert r.status_code == 200, r.text
    events = [e for e in sse_events(r.text) if e != "[DONE]"]
    content, calls, finish = "", {}, None
    for e in events:
        delta = e["choices"][0]["delta"]
        content += delta.get("content") or ""
        for tc in delta.get("tool_calls") or ():
            if "id" in tc:
                assert tc["index"] not in calls and tc["type"] == "function" and tc["function"]["arguments"] == ""
                calls[tc["index"]] = {"id": tc["id"], "type": "function",
                                      "function": {"name": tc["function"]["name"], "arguments": ""}}
            else:
                assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
                calls[tc["index"]]["function"]["arguments"] += tc["function"]["arguments"]
        finish = e["choices"][0]["finish_reason"] or finish
    return content, [calls[i] for i in sorted(calls)], finish, events


def without_ids(calls):
    return [{**c, "id": c["id"][:5]} for c in calls]


@pytest.mark.parametrize("reply, content, names", [
    (CALLS, None, ["get_weather", "now"]),
    ("Let me check. " + CALLS, "Let me check. ", ["get_weather", "now"]),
    ("It is sunny in Paris.", "It is sunny in Paris.", []),
    ("<tool_call>[]</tool_call>", "", []),
])
def test_auto_parses_calls_streamed_and_not(reply, content, names):
    with app_client(fake_model(reply=reply)) as client:
        out = client.post(CHAT, json=chat()).json()
        message, finish = out["choices"][0]["message"], out["choices"][0]["finish_reason"]
        assert message["content"] == content
        calls = message.get("tool_calls", [])
        assert [c["function"]["name"] for c in calls] == names
        assert finish == ("tool_calls" if names else "stop")
        for c in calls:
            assert c["id"].startswith("call_") and c["type"] == "function"
            json.loads(c["function"]["arguments"])
        if names:
            assert calls[0]["function"]["arguments"] == '{"city": "Paris"}'
            assert calls[1]["function"]["arguments"] == "{}"  # empty arguments are "{}"
        else:
            assert "tool_calls" not in message
        s_content, s_calls, s_finish, _ = stream_result(client, chat())
        assert (s_content or None, without_ids(s_calls), s_finish) == (content or None, without_ids(calls), finish)


def test_stream_sends_name_first_then_argument_pieces():
    with app_client(fake_model(reply=CALLS)) as client:
        _, calls, finish, events = stream_result(client, chat())
    pieces = [tc for e in events for tc in e["choices"][0]["delta"].get("tool_calls") or ()]
    assert pieces[0]["index"] == 0 and pieces[0]["function"]["name"] == "get_weather" and "id" in pieces[0]
    assert sum(1 for p in pieces if p["index"] == 0 and "id" not in p) > 1  # the arguments come in pieces
    assert finish == "tool_calls" and len(calls) == 2


def test_max_tokens_mid_call_is_length():
    with app_client(fake_model(reply=CALLS)) as client:
        prefix = '<tool_call>[{"name": "get_weather", "arguments": {"city":'
        n = client.post("/tokenize", json={"prompt": prefix, "add_special_tokens": False}).json()["count"]
        out = client.post(CHAT, json=chat(max_tokens=n)).json()
        choice = out["choices"][0]
        assert choice["finish_reason"] == "length"
        (call,) = choice["message"]["tool_calls"]  # the call had started: it stays, cut short
        assert call["function"]["name"] == "get_weather" and call["function"]["arguments"] == '{"city":'
        _, calls, finish, _ = stream_result(client, chat(max_tokens=n))
        assert finish == "length" and without_ids(calls) == without_ids(choice["message"]["tool_calls"])


def test_tool_choice_none_leaves_the_text_alone():
    with app_client(fake_model(reply=CALLS)) as client:
        out = client.post(CHAT, json=chat(tool_choice="none")).json()
    assert out["choices"][0]["message"] == {"role": "assistant", "content": CALLS}
    assert out["choices"][0]["finish_reason"] == "stop"


def test_multi_turn_tool_conversation_is_accepted():
    messages = [*USER,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
                {"role": "user", "content": "thanks"}]
    with app_client(fake_model()) as client:
        out = client.post(CHAT, json=chat(messages=messages)).json()
        assert out["choices"][0]["message"]["content"] == "thanks"
        prompt = client.post("/tokenize", json={"messages": messages, "return_token_strs": True}).json()
    assert "<tool_call>" in "".join(prompt["token_strs"])


@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/nowhere"}}}]}, "tools"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),  # the fake engine cannot constrain decoding
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
    ({"messages": [{"role": "assistant", "content": None}]}, "messages.0"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}, {"role": "user", "content": None}]}, "messages.1"),
])
def test_bad_tool_requests_are_400_naming_the_parameter(extra, param):
    with app_client(fake_model()) as client:
        for stream in (False, True):
            err = assert_error(client.post(CHAT, json=chat(stream=stream, **extra)), 400)
            assert err["param"] == param or err["param"].startswith(param), err


def test_completions_do_not_take_tools():
    with app_client(fake_model()) as client:
        assert_error(client.post("/v1/completions", json={"prompt": "x", "tools": [WEATHER]}), 400, param="tools")
