"""Helpers to write ``grammar`` constraints (Lark, llguidance's dialect) around JSON schemas,
e.g. a tool call: ``start: {literal("<tool_call>")} {json_rule(schema)} {literal("</tool_call>")}``."""

from __future__ import annotations

import json
from typing import Any


def literal(text: str) -> str:
    """``text`` as a Lark string literal."""
    return json.dumps(text)


def json_rule(schema: dict[str, Any] | bool) -> str:
    """An inline ``%json`` item matching ``schema``, compact like response_format's JSON (a plain
    ``%json`` would allow any whitespace between tokens)."""
    if schema is True:
        schema = {}
    if schema is False:
        schema = {"not": {}}
    schema = {**schema, "x-guidance": {**schema.get("x-guidance", {}), "whitespace_flexible": False}}
    return "%json " + json.dumps(schema, separators=(",", ":"))
