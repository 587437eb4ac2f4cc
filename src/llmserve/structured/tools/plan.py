"""A request's tools against one model: its constraint, its parser, its finish reason."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.errors import UnsupportedParameter
from llmserve.structured.tools.formats import FORMATS, ToolFormat
from llmserve.structured.tools.grammar import tool_constraint
from llmserve.structured.tools.parser import ToolCallStream, parse
from llmserve.structured.tools.request import ToolRequest
from llmserve.types import Constraint, FinishReason, ToolCall


@dataclass(frozen=True)
class ToolPlan:
    tools: ToolRequest
    fmt: ToolFormat
    constraint: Constraint | None

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self.fmt)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        return parse(text, self.fmt)


def plan_tools(tools: ToolRequest | None, tool_format: str | None) -> ToolPlan | None:
    """The plan for a request, or None when its answer is plain text (no tools, ``tool_choice: none``)."""
    if tools is None or not tools.active:
        return None
    fmt = FORMATS.get(tool_format or "")
    if fmt is None:
        raise UnsupportedParameter("tools are not supported by this model's engine", param="tools")
    return ToolPlan(tools, fmt, tool_constraint(tools, fmt))


def finish_reason(reason: FinishReason, calls: list[ToolCall]) -> str:
    """OpenAI's: ``tool_calls`` when the answer called tools and ended by itself."""
    return "tool_calls" if calls and reason is FinishReason.STOP else reason.value
