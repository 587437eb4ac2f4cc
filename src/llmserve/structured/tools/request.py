"""What a request asks of tools, as plain data: the functions, ``tool_choice`` and ``parallel_tool_calls``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmserve.errors import InvalidRequest

CHOICES = ("none", "auto", "required", "function")


@dataclass(frozen=True)
class Function:
    name: str
    description: str | None = None
    parameters: str | None = None  # the JSON Schema of the arguments, as JSON text; None: no arguments

    def schema(self) -> dict[str, Any]:
        """The arguments' schema; a function without ``parameters`` takes none (OpenAI's meaning)."""
        if self.parameters is None:
            return {"type": "object", "properties": {}, "additionalProperties": False}
        return json.loads(self.parameters)

    def as_tool(self) -> dict[str, Any]:
        """The OpenAI tool object, as chat templates (and llmserve's own prompt) receive it."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        fn["parameters"] = self.schema()
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolRequest:
    """``choice``: ``none`` (tools shown, calls never parsed, as vLLM does), ``auto``, ``required``
    or ``function`` (the one function ``name`` must be called)."""

    functions: tuple[Function, ...]
    choice: str = "auto"
    name: str | None = None
    parallel: bool = True
    _by_name: dict[str, Function] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.choice not in CHOICES:
            raise InvalidRequest(f"tool_choice must be one of none, auto, required or a function, not {self.choice!r}",
                                 param="tool_choice")
        for fn in self.functions:
            if fn.name in self._by_name:
                raise InvalidRequest(f"tools: function name {fn.name!r} is defined twice", param="tools")
            self._by_name[fn.name] = fn
        if self.choice in ("required", "function") and not self.functions:
            raise InvalidRequest(f"tool_choice {self.choice!r} needs tools", param="tool_choice")
        if self.choice == "function" and self.name not in self._by_name:
            raise InvalidRequest(f"tool_choice names function {self.name!r}, which is not in tools", param="tool_choice")

    @property
    def active(self) -> bool:
        """Calls are parsed out of the answer (and constrained): every choice but ``none``."""
        return self.choice != "none" and bool(self.functions)

    @property
    def callable(self) -> tuple[Function, ...]:
        """The functions a call may name."""
        return (self._by_name[self.name],) if self.choice == "function" else self.functions

    @property
    def single(self) -> bool:
        """At most one call: ``parallel_tool_calls: false``, or a named function (as OpenAI does)."""
        return not self.parallel or self.choice == "function"

    def template_tools(self) -> list[dict[str, Any]] | None:
        return [fn.as_tool() for fn in self.functions] or None


def tool_request(
    tools: Sequence[dict[str, Any]] | None, tool_choice: str | dict[str, Any] | None, parallel: bool | None
) -> ToolRequest | None:
    """From the OpenAI fields (already shape-checked), or None when the request has no tools."""
    functions = tuple(
        Function(
            t["function"]["name"],
            t["function"].get("description"),
            None if t["function"].get("parameters") is None else json.dumps(t["function"]["parameters"]),
        )
        for t in tools or ()
    )
    if isinstance(tool_choice, dict):
        choice, name = "function", tool_choice["function"]["name"]
    else:
        choice, name = (tool_choice or ("auto" if functions else "none")), None
    if not functions and choice in ("none", "auto"):
        return None
    return ToolRequest(functions, choice, name, True if parallel is None else parallel)
