"""Structured output through a live `llmserve serve` and the official openai SDK, unchanged:
``client.chat.completions.parse()`` with pydantic models, json_object, vLLM's fields via extra_body."""

from __future__ import annotations

import enum
import json
import re
from typing import Optional

import openai
import pytest
from pydantic import BaseModel, Field

MODEL = "SmolLM2-135M-Instruct.Q4_1"

pytestmark = pytest.mark.live


class Role(str, enum.Enum):
    admin = "admin"
    user = "user"
    guest = "guest"


class Address(BaseModel):
    city: str = Field(max_length=24)
    country: str = Field(max_length=24)


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=120)
    role: Role
    languages: list[str] = Field(max_length=3)
    address: Address
    nickname: Optional[str] = Field(default=None, max_length=16)


class Team(BaseModel):
    title: str = Field(max_length=30)
    members: list[Person] = Field(min_length=1, max_length=2)


@pytest.fixture(scope="module")
def sdk(live_server):
    return openai.OpenAI(base_url=live_server + "/v1", api_key="unused")


def ask(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def test_parse_nested_pydantic_models(sdk):
    out = sdk.chat.completions.parse(model=MODEL, messages=ask("Describe Ann, a French engineer, as JSON."),
                                     response_format=Person, temperature=0, max_tokens=200)
    choice = out.choices[0]
    assert choice.finish_reason == "stop"
    person = choice.message.parsed
    assert isinstance(person, Person) and isinstance(person.role, Role) and isinstance(person.address, Address)
    assert Person.model_validate_json(choice.message.content) == person
    team = sdk.chat.completions.parse(model=MODEL, messages=ask("Describe a small team of two people as JSON."),
                                      response_format=Team, temperature=0.7, seed=3, max_tokens=400)
    parsed = team.choices[0].message.parsed
    assert isinstance(parsed, Team) and 1 <= len(parsed.members) <= 2


def test_parse_streaming_matches(sdk):
    kw = dict(model=MODEL, messages=ask("Describe Bob, a Spanish teacher, as JSON."), response_format=Person,
              temperature=0, max_tokens=200)
    whole = sdk.chat.completions.parse(**kw).choices[0].message
    with sdk.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == whole.content
    assert final.choices[0].message.parsed == whole.parsed


def test_json_object_regex_choice(sdk):
    out = sdk.chat.completions.create(model=MODEL, messages=ask("What is the capital of France? Answer in JSON."),
                                      response_format={"type": "json_object"}, temperature=0, max_tokens=60)
    assert isinstance(json.loads(out.choices[0].message.content), dict)
    out = sdk.chat.completions.create(model=MODEL, messages=ask("What year did World War II end?"),
                                      extra_body={"structured_outputs": {"regex": "19[0-9]{2}"}}, temperature=0)
    assert re.fullmatch("19[0-9]{2}", out.choices[0].message.content)
    out = sdk.chat.completions.create(model=MODEL, messages=ask("Is the sky blue? Answer yes or no."),
                                      extra_body={"guided_choice": ["yes", "no"]}, temperature=0)
    assert out.choices[0].message.content in ("yes", "no")


def test_uncompilable_schema_is_a_bad_request(sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model=MODEL, messages=ask("hi"), response_format={"type": "json_schema", "json_schema": {
                "name": "broken", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}}}})
    assert info.value.body["param"] == "response_format"
    assert "nope" in info.value.body["message"]


def test_length_mid_json_raises_in_parse(sdk):
    with pytest.raises(openai.LengthFinishReasonError):
        sdk.chat.completions.parse(model=MODEL, messages=ask("Describe Ann as JSON."), response_format=Person,
                                   temperature=0, max_tokens=5)
