"""Wire fields to a Constraint: OpenAI's response_format, vLLM's structured_outputs and guided_*."""

from __future__ import annotations

import json

import pytest

from llmserve.errors import InvalidRequest
from llmserve.structured.request import constraint_from
from llmserve.types import Constraint

SCHEMA = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}
CANONICAL = json.dumps(SCHEMA, sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize("kw, expected", [
    ({}, None),
    ({"response_format": {"type": "text"}}, None),
    ({"response_format": {"type": "json_object"}}, Constraint("json_object")),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}},
     Constraint("json_schema", CANONICAL)),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, Constraint("json_object")),
    ({"structured_outputs": {"json": SCHEMA}}, Constraint("json_schema", CANONICAL)),
    ({"structured_outputs": {"json": json.dumps(SCHEMA)}}, Constraint("json_schema", CANONICAL)),
    ({"structured_outputs": {"regex": r"\d+", "disable_any_whitespace": True}}, Constraint("regex", r"\d+")),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, Constraint("choice", '["yes", "no"]')),
    ({"structured_outputs": {"grammar": "start: /[a-z]+/"}}, Constraint("grammar", "start: /[a-z]+/")),
    ({"structured_outputs": {"json_object": True}}, Constraint("json_object")),
    ({"guided_json": SCHEMA}, Constraint("json_schema", CANONICAL)),
    ({"guided_regex": "a|b"}, Constraint("regex", "a|b")),
    ({"guided_choice": ["x"]}, Constraint("choice", '["x"]')),
    ({"guided_grammar": "root ::= \"a\""}, Constraint("grammar", "root ::= \"a\"")),
    # the same constraint twice is fine
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"json_object": True}}, Constraint("json_object")),
])
def test_constraint_from(kw, expected):
    assert constraint_from(**kw) == expected


@pytest.mark.parametrize("kw, param, words", [
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {}}, None, None),
    ({"structured_outputs": {"frob": 1}}, "structured_outputs", "frob"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", "non-empty list"),
    ({"structured_outputs": {"choice": [1]}}, "structured_outputs", "strings"),
    ({"structured_outputs": {"json": "{not json"}}, "structured_outputs", "not valid JSON"),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs", "structural_tag"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_regex", "only one"),
    ({"guided_regex": ""}, "guided_regex", "non-empty"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema is required"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}}, "response_format",
     "must be an object"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex", "different"),
])
def test_bad_constraints_name_their_field(kw, param, words):
    if param is None:
        assert constraint_from(**kw) is None
        return
    with pytest.raises(InvalidRequest) as info:
        constraint_from(**kw)
    assert info.value.param == param
    assert words in str(info.value)
