"""Tools and tool turns in the prompt: a template that takes tools renders exactly as transformers
renders it; the bundled SmolLM2 template gets SmolLM2's own tool prompt and call format."""

from __future__ import annotations

import json

import pytest

from llmserve.chat_template import ChatTemplate
from llmserve.structured.tools import HERMES, JSON_LIST, parse
from llmserve.types import Message, ToolCall

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
NOW = {"type": "function", "function": {"name": "now", "description": "The time", "parameters": {"type": "object", "properties": {}}}}

# A Hermes-style template (the shape Qwen's use), written for this test: tools in the system turn,
# one <tool_call> per call, tool results as <tool_response> in a user turn.
HERMES_STYLE = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}You may call functions. Their signatures:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
Answer with <tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call> per call.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{% if message.content %}{{ message.content }}
{% endif %}
{%- for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{% if not loop.last %}
{% endif %}{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris, and the time?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": {}}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 22 C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
    {"role": "assistant", "content": "Sunny and 22 C; it is 14:05."},
    {"role": "user", "content": "And in Rome?"},
]


def ours(conversation) -> list[Message]:
    out = []
    for m in conversation:
        calls = tuple(ToolCall(c["id"], c["function"]["name"], json.dumps(c["function"]["arguments"]))
                      for c in m.get("tool_calls", ()))
        out.append(Message(m["role"], m["content"], calls, m.get("tool_call_id")))
    return out


@pytest.fixture(scope="module")
def hf_tokenizer(bundled_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_path.parent), gguf_file=bundled_path.name)


@pytest.fixture(scope="module")
def smollm2(vocab_model) -> ChatTemplate:
    return ChatTemplate(vocab_model.chat_template())


def test_template_that_takes_tools_renders_as_transformers_does(hf_tokenizer):
    template = ChatTemplate(HERMES_STYLE)
    assert template.renders_tools and template.tool_format is HERMES
    for conversation in (CONVERSATION, CONVERSATION[1:2]):
        theirs = hf_tokenizer.apply_chat_template(conversation, tools=[WEATHER, NOW], chat_template=HERMES_STYLE,
                                                  add_generation_prompt=True, tokenize=False)
        assert template.render(ours(conversation), tools=[WEATHER, NOW]) == theirs
    assert "<tools>" not in template.render(ours(CONVERSATION[1:2]))


def test_smollm2_gets_its_own_tool_prompt(smollm2):
    assert not smollm2.renders_tools and smollm2.tool_format is JSON_LIST
    text = smollm2.render(ours(CONVERSATION[1:2]), tools=[WEATHER])
    assert text.startswith("<|im_start|>system\nYou are an expert in composing functions.")
    assert "named SmolLM" not in text  # the tool prompt is the system turn
    assert "<tools>" + json.dumps([WEATHER["function"]]) + "</tools>" in text
    assert text.endswith("<|im_start|>user\nWeather in Paris, and the time?<|im_end|>\n<|im_start|>assistant\n")
    with_system = smollm2.render(ours(CONVERSATION[:2]), tools=[WEATHER])
    assert with_system.startswith("<|im_start|>system\nBe brief.\n\nYou are an expert in composing functions.")


def test_smollm2_history_with_calls_and_results(smollm2):
    text = smollm2.render(ours(CONVERSATION), tools=[WEATHER, NOW])
    calls = ('<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
             '{"name": "now", "arguments": {}}]</tool_call>')
    assert f"<|im_start|>assistant\n{calls}<|im_end|>\n" in text
    assert "<|im_start|>tool\nSunny, 22 C<|im_end|>\n<|im_start|>tool\n14:05<|im_end|>\n" in text
    # what is written in the history parses back into the same calls
    content, parsed = parse(calls, JSON_LIST)
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in parsed] == [
        ("get_weather", {"city": "Paris"}), ("now", {})]


def test_plain_conversations_render_as_before(smollm2):
    plain = ours([CONVERSATION[0], CONVERSATION[1], CONVERSATION[5]])
    assert smollm2.render(plain) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWeather in Paris, and the time?<|im_end|>\n"
        "<|im_start|>assistant\nSunny and 22 C; it is 14:05.<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("fmt", [JSON_LIST, HERMES])
def test_formatted_calls_parse_back(fmt):
    calls = (ToolCall("a", "f", '{"x": [1, 2]}'), ToolCall("b", "g", "{}"))
    content, parsed = parse(fmt.format_calls(calls), fmt)
    assert content == "" and [(c.name, c.arguments) for c in parsed] == [("f", '{"x": [1, 2]}'), ("g", "{}")]
