"""/openapi.json tells the truth: for every route, each status the server gives is documented, with
the OpenAI error body as the schema of every error, and no 422 (which never happens).

``test_every_provoked_status_is_documented`` provokes each status per route on fake engines and
checks it against the schema; tests/conftest.py also records every status any HTTP test gets and
fails the session when one of them is undocumented.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from pydantic import BaseModel

from llmserve.server.app import create_app
from llmserve.server.protocol import ChatCompletion, EmbeddingList, ErrorResponse, ModelList, TextCompletion
from llmserve.server.routes.health import HealthStatus
from llmserve.server.routes.simple import SimpleChatResponse
from llmserve.settings import Settings
from tests.conftest import PROVOKED, app_client, fake_model, undocumented

MSGS = [{"role": "user", "content": "one two"}]
ERROR_REF = "#/components/schemas/ErrorResponse"


@functools.cache
def schema() -> dict[str, Any]:
    return create_app(Settings(engine="fake")).openapi()


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, ops in doc["paths"].items() for method, op in ops.items()}


# route -> (method, path, a valid body or None, the 200 body's model)
ROUTES: dict[str, tuple[str, str, Any, type[BaseModel] | None]] = {
    "chat": ("POST", "/v1/chat/completions", {"messages": MSGS, "temperature": 0}, ChatCompletion),
    "completions": ("POST", "/v1/completions", {"prompt": "one two", "temperature": 0}, TextCompletion),
    "embeddings": ("POST", "/v1/embeddings", {"input": "one two"}, EmbeddingList),
    "tokenize": ("POST", "/tokenize", {"prompt": "one two"}, None),
    "detokenize": ("POST", "/detokenize", {"tokens": [0]}, None),
    "simple": ("POST", "/chat", {"text": "one two", "temperature": 0}, SimpleChatResponse),
    "simple_stream": ("POST", "/chat_stream", {"text": "one two"}, None),
    "models": ("GET", "/v1/models", None, ModelList),
    "health": ("GET", "/health", None, HealthStatus),
}
WITH_MODEL = ("chat", "completions", "embeddings", "tokenize", "detokenize", "simple", "simple_stream")
RATE_LIMITED = ("chat", "completions", "simple", "simple_stream")


def call(client, route: str, body: Any = ..., **kw):
    method, path, valid, _ = ROUTES[route]
    body = valid if body is ... else body
    if method == "GET":
        return client.get(path, **kw)
    return client.post(path, json=body, **kw) if "content" not in kw else client.post(path, **kw)


def provoke(route: str, status: int) -> Any:
    """Makes ``route`` answer ``status`` for real; returns the response."""
    if status == 200:
        with app_client(fake_model()) as client:
            return call(client, route)
    if status == 400:
        with app_client(fake_model()) as client:
            return call(client, route, content=b"[]", headers={"content-type": "application/json"})
    if status == 401:
        with app_client(fake_model(), settings=Settings(api_keys=["k"])) as client:
            return call(client, route)
    if status == 404:
        with app_client(fake_model()) as client:
            return call(client, route, {**ROUTES[route][2], "model": "nope"})
    if status == 413:
        with app_client(fake_model(), settings=Settings(max_request_bytes=1024)) as client:
            return call(client, route, {**ROUTES[route][2], "user": "x" * 2000})
    if status == 429:
        with app_client(fake_model(), settings=Settings(rate_limit_rpm=1)) as client:
            call(client, route)
            return call(client, route)
    if status == 503:
        with app_client(fake_model(load_delay=2.0), wait=False) as client:
            return call(client, route)
    if status == 500:
        with app_client(fake_model(fail_after=0)) as client:
            return call(client, route)
    raise AssertionError(f"no way to provoke {status}")


CASES = (
    [(r, 200) for r in ROUTES]
    + [(r, s) for r in ROUTES if ROUTES[r][2] is not None for s in (400, 413)]
    + [(r, 401) for r in ROUTES if r != "health"]
    + [(r, s) for r in WITH_MODEL for s in (404, 503)]
    + [(r, 429) for r in RATE_LIMITED]
    + [("chat", 500), ("completions", 500), ("simple", 500), ("simple_stream", 500), ("health", 503)]
)


@pytest.mark.parametrize("route,status", CASES)
def test_every_provoked_status_is_documented(route, status):
    method, path, _, ok_model = ROUTES[route]
    r = provoke(route, status)
    assert r.status_code == status, r.text
    documented = operations(schema())[(method, path)]["responses"]
    assert str(status) in documented, f"{method} {path} answers {status}, which /openapi.json does not document"
    entry = documented[str(status)]
    if route == "health":
        HealthStatus.model_validate(r.json())
        assert entry["content"]["application/json"]["schema"]["$ref"].endswith("/HealthStatus")
    elif status >= 400:
        assert entry["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}
        ErrorResponse.model_validate(r.json())
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    elif route == "simple_stream":
        assert r.headers["content-type"].startswith("text/event-stream") and "text/event-stream" in entry["content"]
    elif ok_model is not None:
        ok_model.model_validate(r.json())
        assert entry["content"]["application/json"]["schema"]["$ref"].endswith("/" + ok_model.__name__)


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_streams_are_documented_as_server_sent_events(route):
    with app_client(fake_model()) as client:
        r = call(client, route, {**ROUTES[route][2], "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    method, path, _, _ = ROUTES[route]
    assert "text/event-stream" in operations(schema())[(method, path)]["responses"]["200"]["content"]


def test_no_422_and_every_error_is_the_openai_body():
    doc = schema()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "ValidationError" not in doc["components"]["schemas"]
    assert set(doc["components"]["schemas"]["ErrorResponse"]["properties"]) == {"error"}
    for (method, path), op in operations(doc).items():
        assert "422" not in op["responses"], f"{method} {path}"
        assert "500" in op["responses"], f"{method} {path}"
        for status, entry in op["responses"].items():
            if int(status) >= 400 and path != "/health":
                assert entry["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (method, path, status)


def test_every_route_in_the_schema_is_checked_here():
    """A new route must join ROUTES (and so the checks above), or a module's own such test."""
    from tests.server.test_batch_api import BATCH_ROUTES  # checked in test_every_status_of_the_routes_is_documented

    lora = {("POST", "/v1/load_lora_adapter"), ("POST", "/v1/unload_lora_adapter")}  # test_lora_routes.py
    assert set(operations(schema())) == {(m, p) for m, p, _, _ in ROUTES.values()} | BATCH_ROUTES | lora


def test_empty_and_non_object_bodies_say_so():
    with app_client(fake_model()) as client:
        for content in (b"", b"null", b"[]", b"5", b'"text"'):
            for path in ("/v1/chat/completions", "/v1/completions", "/tokenize", "/chat"):
                r = client.post(path, content=content, headers={"content-type": "application/json"})
                assert r.status_code == 400
                assert r.json()["error"]["message"].startswith("the request body must be a JSON object"), (path, content)
        r = client.post("/v1/chat/completions", json={})
        assert r.json()["error"]["message"] == "missing required parameter: messages"


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, IMAGE]}]}),
    ("/chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, IMAGE]}]}),
    ("/tokenize", {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"}, IMAGE]}]}),
])
def test_a_part_the_model_cannot_take_is_named(path, body):
    with app_client(fake_model("vision-less")) as client:
        err = client.post(path, json=body).json()["error"]
    assert err["message"] == "messages[0].content[1]: image input is not supported by model 'vision-less'"
    assert err["param"] == "messages[0].content[1]" and err["code"] == "unsupported_parameter"


@pytest.mark.parametrize("content,message", [
    (5, "messages.0.content: must be a string or an array of content parts"),
    ([{"type": "video"}], "messages.0.content[0]: unknown content part type 'video'; expected text, image_url, "
                          "input_audio or file"),
    ([{"text": "x"}], "messages.0.content[0]: a content part needs a 'type'"),
    ([{"type": "text"}], "messages.0.content[0].text: Field required"),
])
def test_bad_content_gets_one_clear_message(content, message):
    with app_client(fake_model()) as client:
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
    assert r.status_code == 400 and r.json()["error"]["message"] == message



def test_the_session_wide_check_catches_an_undocumented_status():
    """tests/conftest.py records every status the HTTP tests get and fails the session on one that
    /openapi.json does not document; this is that check on statuses made up for it."""
    with app_client(fake_model()) as client:
        client.post("/v1/chat/completions", json={"messages": MSGS, "temperature": 9})
    assert ("POST", "/v1/chat/completions", 400) in PROVOKED
    assert undocumented({("POST", "/v1/chat/completions", 418)}) == ["POST /v1/chat/completions answered 418"]
    assert undocumented({("POST", "/v1/chat/completions", 400), ("GET", "/no-such-route", 404),
                         ("POST", "/chat", 499)}) == []
