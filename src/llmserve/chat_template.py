"""Chat templates rendered exactly as transformers renders them (same Jinja environment)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmserve.errors import InvalidRequest
from llmserve.structured.tools.formats import format_for_template
from llmserve.structured.tools.render import plain_messages, template_messages
from llmserve.types import Message


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template plus the special-token strings it may refer to."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = ""):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
            takes_tools = "tools" in jinja2.meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"chat template does not compile: {exc}") from exc
        # the tool-call format the prompt teaches; a template that takes tools in a format llmserve
        # knows renders tools and tool turns itself, any other gets llmserve's (structured/tools/render.py)
        self.tool_format = format_for_template(source, takes_tools)
        self.renders_tools = takes_tools and self.tool_format.open in source
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
               tools: Sequence[dict[str, Any]] | None = None) -> str:
        """``tools``: OpenAI tool objects (``{"type": "function", "function": {...}}``) to show the model."""
        extra: dict[str, Any] = {}
        if self.renders_tools:
            dicts = template_messages(messages)
            if tools:
                extra["tools"] = list(tools)
        else:
            dicts = plain_messages(messages, tools, self.tool_format)
        try:
            return self._template.render(
                messages=dicts,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except jinja2.TemplateError as exc:
            # the template's own raise_exception (e.g. "roles must alternate") is the caller's fault
            raise InvalidRequest(f"chat template rejected the messages: {exc}", param="messages") from exc
