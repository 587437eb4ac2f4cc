"""Wire fields to a ``Constraint``: OpenAI's ``response_format``, vLLM's ``structured_outputs``
and its older ``guided_json`` / ``guided_regex`` / ``guided_choice`` / ``guided_grammar``.

Takes plain values (dicts, strings), so it knows nothing of the server's wire models. At most
one constraint per request: two different ones are a 400 naming the second.
"""

from __future__ import annotations

import json
from typing import Any

from llmserve.errors import InvalidRequest
from llmserve.types import Constraint

# vLLM's structured_outputs keys -> our kinds (json_object is vLLM's boolean flag)
_VLLM_KINDS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar"}
_VLLM_IGNORED = {"disable_fallback", "disable_any_whitespace", "disable_additional_properties", "whitespace_pattern",
                 "backend", "_backend", "_backend_was_auto"}


def _schema_text(schema: Any, param: str) -> str:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InvalidRequest(f"{param}: the schema is not valid JSON ({exc})", param=param) from None
    if not isinstance(schema, (dict, bool)):
        raise InvalidRequest(f"{param}: a JSON schema must be an object", param=param)
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def _choice_text(choice: Any, param: str) -> str:
    if not isinstance(choice, list) or not choice or not all(isinstance(c, str) for c in choice):
        raise InvalidRequest(f"{param}: choice must be a non-empty list of strings", param=param)
    return json.dumps(choice)


def _text(value: Any, what: str, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{param}: {what} must be a non-empty string", param=param)
    return value


def from_response_format(fmt: dict[str, Any] | None) -> Constraint | None:
    """OpenAI's ``response_format``: ``text`` (none), ``json_object``, or ``json_schema`` with
    ``{name, schema, strict}`` (``schema`` omitted: any JSON object)."""
    if not fmt or fmt.get("type", "text") == "text":
        return None
    param = "response_format"
    if fmt["type"] == "json_object":
        return Constraint("json_object")
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise InvalidRequest("response_format.json_schema is required for type json_schema", param=param)
        if "schema" not in spec:
            return Constraint("json_object")
        return Constraint("json_schema", _schema_text(spec["schema"], param))
    raise InvalidRequest(f"response_format type {fmt['type']!r} is not supported", param=param)


def from_structured_outputs(so: dict[str, Any] | None, param: str = "structured_outputs") -> Constraint | None:
    """vLLM's ``structured_outputs``: exactly one of ``json``, ``regex``, ``choice``, ``grammar``,
    ``json_object``; its backend and whitespace knobs are accepted and left to the server."""
    if not so:
        return None
    unknown = set(so) - set(_VLLM_KINDS) - {"json_object", "structural_tag"} - _VLLM_IGNORED
    if unknown:
        raise InvalidRequest(f"{param}: unknown field {sorted(unknown)[0]!r}", param=param)
    if so.get("structural_tag") is not None:
        raise InvalidRequest(f"{param}.structural_tag is not supported", param=param)
    set_kinds = [k for k in (*_VLLM_KINDS, "json_object") if so.get(k) not in (None, False)]
    if len(set_kinds) != 1:
        raise InvalidRequest(f"{param} takes exactly one of json, regex, choice, grammar, json_object", param=param)
    key = set_kinds[0]
    value = so[key]
    if key == "json_object":
        return Constraint("json_object")
    if key == "json":
        return Constraint("json_schema", _schema_text(value, param))
    if key == "choice":
        return Constraint("choice", _choice_text(value, param))
    return Constraint(_VLLM_KINDS[key], _text(value, key, param))


def from_guided(*, guided_json: Any = None, guided_regex: str | None = None, guided_choice: Any = None,
                guided_grammar: str | None = None) -> tuple[Constraint | None, str | None]:
    """vLLM's older ``guided_*`` fields; returns the constraint and the field that set it."""
    given = {k: v for k, v in (("json", guided_json), ("regex", guided_regex), ("choice", guided_choice),
                               ("grammar", guided_grammar)) if v is not None}
    if not given:
        return None, None
    if len(given) > 1:
        second = f"guided_{sorted(given)[1]}"
        raise InvalidRequest("only one of guided_json, guided_regex, guided_choice, guided_grammar may be set",
                             param=second)
    key = next(iter(given))
    return from_structured_outputs({key: given[key]}, param=f"guided_{key}"), f"guided_{key}"


def constraint_from(*, response_format: dict[str, Any] | None = None, structured_outputs: dict[str, Any] | None = None,
                    **guided: Any) -> Constraint | None:
    """The request's one constraint (None: free text). Sources that disagree are a 400."""
    found: list[tuple[str, Constraint]] = []
    c = from_response_format(response_format)
    if c is not None:
        found.append(("response_format", c))
    c = from_structured_outputs(structured_outputs)
    if c is not None:
        found.append(("structured_outputs", c))
    c, name = from_guided(**guided)
    if c is not None:
        found.append((name, c))
    if len({c for _, c in found}) > 1:
        raise InvalidRequest(f"{found[0][0]} and {found[1][0]} ask for different outputs; send one", param=found[1][0])
    return found[0][1] if found else None
