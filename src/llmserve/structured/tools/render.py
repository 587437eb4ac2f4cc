"""Tools and tool turns in the prompt.

A template that takes ``tools`` and knows ``<tool_call>`` renders them itself: it gets OpenAI-shaped
messages (``tool_calls`` with the arguments as a mapping, as transformers passes them). Any other
template gets plain messages: llmserve writes the tools into the system prompt the way SmolLM2
was trained (its model card's function-calling prompt), an assistant turn's calls as the text the
model would have written, and tool results as ``tool`` turns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llmserve.structured.tools.formats import ToolFormat
from llmserve.types import Message, ToolCall

TOOLS_PROMPT = (
    "You are an expert in composing functions. You are given a question and a set of possible functions.\n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the functions can be used, point it out and refuse to answer.\n"
    "If the given question lacks the parameters required by the function, also point it out.\n\n"
    "You have access to the following tools:\n"
    "<tools>{tools}</tools>\n\n"
    "The output MUST strictly adhere to the following format, and NO other text MUST be included.\n"
    "The example format is as follows. Please make sure the parameter type is correct. If no function call "
    "is needed, please make the tool calls an empty list '[]'.\n"
    "<tool_call>[\n"
    '{{"name": "func_name1", "arguments": {{"argument1": "value1", "argument2": "value2"}}}},\n'
    "... (more tool calls as required)\n"
    "]</tool_call>"
)


def tools_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The system prompt that teaches llmserve's own (SmolLM2's) format for these OpenAI tools."""
    functions = [t.get("function", t) for t in tools]
    return TOOLS_PROMPT.format(tools=json.dumps(functions, ensure_ascii=False))


def plain_messages(messages: Sequence[Message], tools: Sequence[dict[str, Any]] | None,
                   fmt: ToolFormat) -> list[dict[str, Any]]:
    """Messages for a template that knows nothing of tools (role and content only)."""
    out = []
    for m in messages:
        content = m.content
        if m.tool_calls:
            content = (content + "\n" if content else "") + fmt.format_calls(m.tool_calls)
        out.append({"role": m.role, "content": content})
    if tools:
        prompt = tools_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def template_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """OpenAI-shaped messages for a template that renders tool turns itself."""
    out = []
    for m in messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            d["tool_calls"] = [_call(c) for c in m.tool_calls]
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


def _call(call: ToolCall) -> dict[str, Any]:
    try:
        arguments: Any = json.loads(call.arguments or "{}")
    except ValueError:
        arguments = call.arguments
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}
