"""The tool-call constraint compiled by llguidance over the bundled tokenizer: what it accepts."""

from __future__ import annotations

import dataclasses

import pytest

from llmserve.errors import InvalidRequest
from llmserve.structured.tools import HERMES, JSON_LIST, tool_constraint, tool_request

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                   "required": ["city"]}}}
NOW = {"type": "function", "function": {"name": "now"}}  # no parameters: takes none
TOOLS = [WEATHER, NOW]


def accepts(backend, constraint, text: str) -> bool:
    matcher = backend.compile(dataclasses.replace(constraint, trigger=None)).matcher()
    return matcher.consume(backend.tokenize(text.encode())) and matcher.accepting


def call(name, args):
    return f'{{"name": "{name}", "arguments": {args}}}'


PARIS = call("get_weather", '{"city": "Paris"}')
PARIS_F = call("get_weather", '{"city": "Paris", "unit": "f"}')
NOW_CALL = call("now", "{}")


def listed(*calls):
    return f"<tool_call>[{', '.join(calls)}]</tool_call>"


def hermes(*calls):
    return "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in calls)


def test_required_accepts_valid_calls_only(backend):
    c = tool_constraint(tool_request(TOOLS, "required", None), JSON_LIST)
    assert c.kind == "grammar" and c.trigger is None
    assert accepts(backend, c, listed(PARIS))
    assert accepts(backend, c, listed(PARIS_F, NOW_CALL))  # parallel by default
    assert not accepts(backend, c, listed())  # required: at least one call
    assert not accepts(backend, c, listed(call("get_weather", "{}")))  # "city" is required
    assert not accepts(backend, c, listed(call("get_weather", '{"city": 3}')))  # wrong type
    assert not accepts(backend, c, listed(call("get_weather", '{"city": "Paris", "unit": "k"}')))  # not in enum
    assert not accepts(backend, c, listed(call("get_weather", '{"city": "Paris", "x": 1}')))  # undeclared key
    assert not accepts(backend, c, listed(call("now", '{"a": 1}')))  # a function without parameters
    assert not accepts(backend, c, listed(call("delete_all", "{}")))  # not a tool
    assert not accepts(backend, c, "Sure. " + listed(PARIS))  # nothing before the call
    assert not accepts(backend, c, listed(call("get_weather", '{"city":    "Paris"}')))  # bounded whitespace


def test_single_call_when_parallel_is_off_or_a_function_is_named(backend):
    single = tool_constraint(tool_request(TOOLS, "required", False), JSON_LIST)
    assert accepts(backend, single, listed(PARIS))
    assert not accepts(backend, single, listed(PARIS, NOW_CALL))
    named = tool_constraint(tool_request(TOOLS, {"type": "function", "function": {"name": "now"}}, None), JSON_LIST)
    assert accepts(backend, named, listed(NOW_CALL))
    assert not accepts(backend, named, listed(PARIS))
    assert not accepts(backend, named, listed(NOW_CALL, NOW_CALL))


def test_auto_is_lazy_and_allows_the_empty_list(backend):
    c = tool_constraint(tool_request(TOOLS, "auto", None), JSON_LIST)
    assert c.trigger == "<tool_call>"
    assert accepts(backend, c, listed(PARIS))
    assert accepts(backend, c, "<tool_call>[]</tool_call>")  # SmolLM2's "no call needed"
    assert tool_constraint(tool_request(TOOLS, "none", None), JSON_LIST) is None


def test_hermes_format(backend):
    c = tool_constraint(tool_request(TOOLS, "required", None), HERMES)
    assert accepts(backend, c, hermes(PARIS))
    assert accepts(backend, c, hermes(PARIS, NOW_CALL))
    assert not accepts(backend, c, listed(PARIS))
    single = tool_constraint(tool_request(TOOLS, "required", False), HERMES)
    assert not accepts(backend, single, hermes(PARIS, NOW_CALL))


def test_uncompilable_parameters_are_400_naming_tools():
    bad = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}}}}
    with pytest.raises(InvalidRequest) as info:
        tool_constraint(tool_request([bad], "required", None), JSON_LIST)
    assert info.value.param == "tools" and "missing" in info.value.message


@pytest.mark.parametrize("tools, choice, param", [
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
    ([], "required", "tool_choice"),
    ([WEATHER, WEATHER], "auto", "tools"),
])
def test_bad_tool_requests_name_the_parameter(tools, choice, param):
    with pytest.raises(InvalidRequest) as info:
        tool_request(tools, choice, None)
    assert info.value.param == param


def test_plan_follows_what_the_engine_honours():
    from llmserve.errors import UnsupportedParameter
    from llmserve.structured.tools import plan_tools, tool_capabilities
    from llmserve.types import Capabilities

    lazy = Capabilities(frozenset(), 1024, tool_format="json_list", constraints=frozenset({"grammar", "trigger"}))
    eager = Capabilities(frozenset(), 1024, tool_format="hermes", constraints=frozenset({"grammar"}))  # vLLM
    free = Capabilities(frozenset(), 1024, tool_format="json_list")  # no constrained decoding at all
    auto, required = tool_request(TOOLS, "auto", None), tool_request(TOOLS, "required", None)
    assert plan_tools(auto, lazy).constraint.trigger == "<tool_call>"
    assert plan_tools(auto, eager).constraint is None and plan_tools(auto, eager).fmt is HERMES
    assert plan_tools(required, eager).constraint.trigger is None
    assert plan_tools(auto, free).constraint is None
    with pytest.raises(UnsupportedParameter) as info:
        plan_tools(required, free)
    assert info.value.param == "tool_choice"
    assert plan_tools(tool_request(TOOLS, "none", None), lazy) is None
    assert tool_capabilities(free) == {"format": "json_list", "tool_choice": ["none", "auto"], "constrained_auto": False}
    assert tool_capabilities(Capabilities(frozenset(), 0)) == {}
