"""A request's tools against one model: its constraint, its parser, its finish reason."""

from __future__ import annotations

from dataclasses import dataclass

from llmserve.errors import UnsupportedParameter
from llmserve.structured.tools.formats import FORMATS, ToolFormat
from llmserve.structured.tools.grammar import tool_constraint
from llmserve.structured.tools.parser import ToolCallStream, parse
from llmserve.structured.tools.request import ToolRequest
from llmserve.types import Capabilities, Constraint, FinishReason, ToolCall


@dataclass(frozen=True)
class ToolPlan:
    tools: ToolRequest
    fmt: ToolFormat
    constraint: Constraint | None

    def stream(self) -> ToolCallStream:
        return ToolCallStream(self.fmt)

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        return parse(text, self.fmt)


def plan_tools(tools: ToolRequest | None, caps: Capabilities) -> ToolPlan | None:
    """The plan for a request, or None when its answer is plain text (no tools, ``tool_choice: none``).

    An engine without lazy constraints (vLLM's structured outputs have no trigger) decodes ``auto``
    freely and the calls are parsed as the model wrote them, as vLLM itself does; ``required`` and
    a named function need a grammar, and are refused where the engine cannot enforce one."""
    if tools is None or not tools.active:
        return None
    fmt = FORMATS.get(caps.tool_format or "")
    if fmt is None:
        raise UnsupportedParameter("tools are not supported by this model's engine", param="tools")
    constraint = tool_constraint(tools, fmt)
    if constraint is not None and "grammar" not in caps.constraints:
        if constraint.trigger is None:
            raise UnsupportedParameter(
                f"tool_choice {tools.choice!r} needs constrained decoding, which this engine does not do",
                param="tool_choice")
        constraint = None
    if constraint is not None and constraint.trigger is not None and "trigger" not in caps.constraints:
        constraint = None
    return ToolPlan(tools, fmt, constraint)


def tool_capabilities(caps: Capabilities) -> dict[str, object]:
    """What ``/v1/models`` says of an engine's tools: the call format of its template, the
    ``tool_choice`` values it honours, and whether ``auto`` is constrained once a call opens."""
    if caps.tool_format is None:
        return {}
    choices = ["none", "auto"] + (["required", "function"] if "grammar" in caps.constraints else [])
    return {"format": caps.tool_format, "tool_choice": choices,
            "constrained_auto": "grammar" in caps.constraints and "trigger" in caps.constraints}


def finish_reason(reason: FinishReason, calls: list[ToolCall]) -> str:
    """OpenAI's: ``tool_calls`` when the answer called tools and ended by itself."""
    return "tool_calls" if calls and reason is FinishReason.STOP else reason.value
