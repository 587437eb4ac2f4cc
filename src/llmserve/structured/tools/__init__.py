"""Tool calling: tools in the prompt, the constraint that makes calls valid, one parser for every engine."""

from llmserve.structured.tools.formats import FORMATS, HERMES, JSON_LIST, ToolFormat, format_for_template
from llmserve.structured.tools.grammar import tool_constraint, tool_grammar
from llmserve.structured.tools.parser import Arguments, CallStart, Content, Event, ToolCallStream, parse
from llmserve.structured.tools.plan import ToolPlan, finish_reason, plan_tools, tool_capabilities
from llmserve.structured.tools.request import Function, ToolRequest, tool_request

__all__ = [
    "FORMATS", "HERMES", "JSON_LIST", "ToolFormat", "format_for_template", "tool_constraint", "tool_grammar",
    "Arguments", "CallStart", "Content", "Event", "ToolCallStream", "parse", "Function", "ToolRequest", "tool_request",
    "ToolPlan", "finish_reason", "plan_tools", "tool_capabilities",
]
