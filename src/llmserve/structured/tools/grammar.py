"""The constraint that makes a reply a valid tool call: a Lark grammar (llguidance's dialect) whose
arguments are ``%json`` sub-grammars of each function's ``parameters`` schema.

``required`` and a named function constrain the whole reply; ``auto`` is lazy: decoding is free
until the model writes the opening tag, and from the tag on (the tag included) the reply must be
calls to the end. ``parallel_tool_calls: false`` and a named function allow one call.
"""

from __future__ import annotations

import json
import logging

from llmserve.errors import InvalidRequest
from llmserve.structured.tools.formats import ToolFormat
from llmserve.structured.tools.request import Function, ToolRequest
from llmserve.types import Constraint

logger = logging.getLogger(__name__)
# arguments laid out as models write them ({"a": 1, "b": 2}) and no other whitespace, so that a
# small model cannot run on with newlines up to max_tokens
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _lit(text: str) -> str:
    """A Lark string literal (JSON's escapes are Lark's)."""
    return json.dumps(text, ensure_ascii=False)


def tool_grammar(fmt: ToolFormat, functions: tuple[Function, ...], *, single: bool, allow_empty: bool) -> str:
    """Lark grammar text: one or more calls (exactly one when ``single``) in ``fmt``.

    ``allow_empty`` (``auto`` in a listed format) also accepts an empty list, the way SmolLM2
    says that no call is needed."""
    calls = " | ".join(f"fn_{i}" for i in range(len(functions)))
    rules = [f"call: {calls}"]
    for i, fn in enumerate(functions):
        head = fmt.call_json(fn.name, "")[:-1]  # '{"name": "f", "arguments": ' (the object left open)
        rules.append(f"fn_{i}: {_lit(head)} args_{i} {_lit('}')}")
        schema = {"x-guidance": JSON_LAYOUT, **_closed(fn.schema())}
        rules.append(f"args_{i}: %json {json.dumps(schema, ensure_ascii=False)}")
    if fmt.listed:
        items = "call" if single else f"call ({_lit(fmt.separator)} call)*"
        if allow_empty:
            items = f"({items})?"
        start = f"start: {_lit(fmt.open + fmt.lead + '[')} {items} {_lit(']' + fmt.trail + fmt.close)}"
    else:
        rules.append(f"block: {_lit(fmt.open + fmt.lead)} call {_lit(fmt.trail + fmt.close)}")
        start = "start: block" if single else f"start: block ({_lit(fmt.separator)} block)*"
    return "\n".join([start, *rules]) + "\n"


def _closed(schema: dict) -> dict:
    """The arguments object admits only its declared properties unless the schema says otherwise
    (every call this allows is valid against the schema as given; small models otherwise invent keys)."""
    if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
        return {**schema, "additionalProperties": False}
    return schema


def tool_constraint(tools: ToolRequest, fmt: ToolFormat) -> Constraint | None:
    """The constraint for ``tools`` in ``fmt`` (None for ``tool_choice: none``); a parameters
    schema the grammar engine cannot compile is InvalidRequest naming ``tools``."""
    if not tools.active:
        return None
    lazy = tools.choice == "auto"
    grammar = tool_grammar(fmt, tools.callable, single=tools.single, allow_empty=lazy)
    check_grammar(grammar)
    return Constraint("grammar", grammar, trigger=fmt.open if lazy else None)


def check_grammar(grammar: str) -> None:
    """Raise InvalidRequest (param ``tools``) with llguidance's reason when ``grammar`` does not compile."""
    try:
        import llguidance
    except ImportError:  # no grammar engine installed: the engine reports what it cannot enforce
        return
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(llguidance.grammar_from("lark", grammar))
    if is_error:
        reason = messages[0].splitlines()[0] if messages else "unknown error"
        raise InvalidRequest(f"a function's parameters schema cannot be compiled: {reason}", param="tools")
