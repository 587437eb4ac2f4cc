"""The tool-call formats llmserve knows: how calls look in a model's output and in its history.

``json_list`` (SmolLM2's training format, and llmserve's own format for templates that do not
take tools): all calls of a turn in one JSON list, ``<tool_call>[{"name": ..., "arguments":
{...}}, ...]</tool_call>``. ``hermes`` (Qwen, Hermes and the templates that take ``tools`` and
mention ``<tool_call>``): one ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``
per call, separated by a newline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from llmserve.types import ToolCall

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


@dataclass(frozen=True)
class ToolFormat:
    name: str
    listed: bool  # every call of a turn in one JSON list inside one tag
    lead: str  # between the opening tag and the JSON
    trail: str  # between the JSON and the closing tag
    separator: str  # between two calls: list items (listed) or two tagged blocks
    open: str = OPEN
    close: str = CLOSE

    def call_json(self, name: str, arguments: str) -> str:
        """One call object as the model writes it (``arguments`` is JSON text)."""
        return f'{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": {arguments}}}'

    def format_calls(self, calls: Sequence[ToolCall]) -> str:
        """The text an assistant turn with these calls would have produced (for the history)."""
        objects = [self.call_json(c.name, _json_or_empty(c.arguments)) for c in calls]
        if self.listed:
            return f"{self.open}{self.lead}[{self.separator.join(objects)}]{self.trail}{self.close}"
        return self.separator.join(f"{self.open}{self.lead}{o}{self.trail}{self.close}" for o in objects)


JSON_LIST = ToolFormat("json_list", listed=True, lead="", trail="", separator=", ")
HERMES = ToolFormat("hermes", listed=False, lead="\n", trail="\n", separator="\n")
FORMATS: dict[str, ToolFormat] = {f.name: f for f in (JSON_LIST, HERMES)}


def format_for_template(source: str, takes_tools: bool) -> ToolFormat:
    """The format a chat template's prompt teaches: its own when it takes ``tools`` and writes
    ``<tool_call>`` tags, otherwise llmserve's ``json_list`` (rendered by llmserve, see ``render``)."""
    if takes_tools and OPEN in source:
        return HERMES
    return JSON_LIST


def _json_or_empty(arguments: str) -> str:
    """Arguments as JSON text for the prompt; what does not parse is written as a JSON string."""
    text = arguments.strip() or "{}"
    try:
        json.loads(text)
    except ValueError:
        return json.dumps(text, ensure_ascii=False)
    return text
