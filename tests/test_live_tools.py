"""Tool calling through a live `llmserve serve` on the bundled model and the official openai SDK,
unchanged: tool_choice required, named, auto (a turn that calls and one that does not), parallel
and single calls, a multi-turn tool conversation, streamed answers equal to whole ones."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

MODEL = "SmolLM2-135M-Instruct.Q4_1"

pytestmark = pytest.mark.live

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city name"}},
                   "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def call(call_id: str, name: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


# an earlier turn in which the assistant called a tool: the 135M model then calls by itself
PARIS_TURN = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_weather", {"city": "Paris"})]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 22 C"},
]
TWO_CITIES_TURN = [
    {"role": "user", "content": "What is the weather in Paris and in London?"},
    {"role": "assistant", "content": None, "tool_calls": [
        call("call_1", "get_weather", {"city": "Paris"}), call("call_2", "get_weather", {"city": "London"})]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "Rainy"},
    {"role": "assistant", "content": "Paris is sunny and London is rainy."},
    {"role": "user", "content": "What is the weather in Rome and in Berlin?"},
]


@pytest.fixture(scope="module")
def sdk(live_server):
    return openai.OpenAI(base_url=live_server + "/v1", api_key="unused")


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def create(sdk, messages, **kw):
    return sdk.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=80, **kw)


def valid_calls(message) -> list[tuple[str, dict]]:
    out = []
    for c in message.tool_calls or ():
        assert c.id.startswith("call_") and c.type == "function"
        arguments = json.loads(c.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[c.function.name])
        out.append((c.function.name, arguments))
    return out


def streamed(sdk, messages, **kw):
    """The same request streamed, put together by the SDK's own stream helper."""
    with sdk.chat.completions.stream(model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=80,
                                     **kw) as stream:
        return stream.get_final_completion().choices[0]


def same_answer(a, b) -> None:
    assert a.finish_reason == b.finish_reason
    assert (a.message.content or None) == (b.message.content or None)
    assert [(c.function.name, c.function.arguments) for c in a.message.tool_calls or ()] == \
        [(c.function.name, c.function.arguments) for c in b.message.tool_calls or ()]


def test_required_is_always_a_valid_call(sdk):
    for question in ("What is the weather in Paris?", "Tell me a joke."):
        kw = dict(tool_choice="required")
        choice = create(sdk, ask(question), **kw).choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        calls = valid_calls(choice.message)
        assert calls and all(name in SCHEMAS for name, _ in calls)
        same_answer(streamed(sdk, ask(question), **kw), choice)
    calls = valid_calls(create(sdk, ask("What is the weather in Paris?"), tool_choice="required").choices[0].message)
    assert calls == [("get_weather", {"city": "Paris"})]


def test_named_function(sdk):
    kw = dict(tool_choice={"type": "function", "function": {"name": "get_time"}})
    choice = create(sdk, ask("What is the weather in Paris?"), **kw).choices[0]
    calls = valid_calls(choice.message)
    assert choice.finish_reason == "tool_calls" and [name for name, _ in calls] == ["get_time"]
    same_answer(streamed(sdk, ask("What is the weather in Paris?"), **kw), choice)


def test_auto_answers_in_text_when_no_call_is_needed(sdk):
    choice = create(sdk, ask("What is 2+2?"), tool_choice="auto").choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert "4" in choice.message.content
    same_answer(streamed(sdk, ask("What is 2+2?")), choice)  # auto is the default with tools


def test_auto_calls_when_the_model_opens_a_call(sdk):
    messages = [*PARIS_TURN, {"role": "assistant", "content": "It is sunny in Paris."},
                {"role": "user", "content": "What is the weather in Berlin?"}]
    choice = create(sdk, messages).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert valid_calls(choice.message) == [("get_weather", {"city": "Berlin"})]
    same_answer(streamed(sdk, messages), choice)


def test_parallel_and_single_calls(sdk):
    choice = create(sdk, TWO_CITIES_TURN, tool_choice="required").choices[0]
    assert valid_calls(choice.message) == [("get_weather", {"city": "Rome"}), ("get_weather", {"city": "Berlin"})]
    same_answer(streamed(sdk, TWO_CITIES_TURN, tool_choice="required"), choice)
    single = create(sdk, TWO_CITIES_TURN, tool_choice="required", parallel_tool_calls=False).choices[0]
    assert valid_calls(single.message) == [("get_weather", {"city": "Rome"})]
    same_answer(streamed(sdk, TWO_CITIES_TURN, tool_choice="required", parallel_tool_calls=False), single)


def test_multi_turn_tool_conversation(sdk):
    first = create(sdk, ask("What is the weather in Paris?"), tool_choice="required").choices[0].message
    assert valid_calls(first) == [("get_weather", {"city": "Paris"})]
    messages = [*ask("What is the weather in Paris?"), first.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": first.tool_calls[0].id,
                 "content": json.dumps({"weather": "sunny", "temperature": 22})}]
    final = create(sdk, messages).choices[0]
    assert final.finish_reason == "stop" and not final.message.tool_calls
    assert "sunny" in final.message.content.lower()


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(max_length=20)


def test_pydantic_function_tool_parse(sdk):
    out = sdk.chat.completions.parse(model=MODEL, messages=ask("What is the weather in Paris?"), temperature=0,
                                     tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required")
    parsed = out.choices[0].message.tool_calls[0].function.parsed_arguments
    assert isinstance(parsed, GetWeather) and len(parsed.city) <= 20


def test_uncompilable_parameters_are_a_bad_request(sdk):
    broken = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}}}}
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=MODEL, messages=ask("hi"), tools=[broken], tool_choice="required")
    assert info.value.body["param"] == "tools" and "nope" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        create(sdk, ask("hi"), tool_choice={"type": "function", "function": {"name": "missing"}})
    assert info.value.body["param"] == "tool_choice"
