"""``/openapi.json`` as the server really answers: every error status a route can give, each with
the OpenAI error body (``ErrorResponse``), and no 422 (validation errors are 400 here).

Routes declare what only they know (``errors(404, 503)`` where a model is looked up, the success
shapes of streaming routes); ``install`` adds what follows from how a route is built:

- 400 and 413 where it takes a body (validation, ``--max-request-bytes``);
- 401 where it depends on ``require_api_key`` (when API keys are required);
- 429 where it depends on ``rate_limit`` (when rate limits are on);
- 500 everywhere (an unexpected failure).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, routing
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from llmserve.server.protocol import ErrorResponse

DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: malformed JSON, a body that is not a JSON object, a schema violation, a parameter "
         "the model cannot honour, a prompt over the context (code context_length_exceeded)",
    401: "Missing or wrong API key (when the server requires keys)",
    403: "The API key may not do this: run-time management needs a key created with 'llmserve keys create --admin'",
    404: "The model named in the request is not served here (code model_not_found)",
    413: "The request body is larger than --max-request-bytes",
    429: "Rate limit of the API key reached; Retry-After says when to try again",
    500: "The engine or the server failed; the server stays up",
    503: "The model is still loading, or its queue is full or timed out; Retry-After says when to try again",
}
ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
SSE = "text/event-stream"


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for error statuses, each with the OpenAI error body."""
    return {status: {"model": ErrorResponse, "description": DESCRIPTIONS[status]} for status in statuses}


def sse_event(description: str) -> dict[str, Any]:
    """The schema of one server-sent event (what a schema-aware client or fuzzer checks each event
    against): its ``data`` line(s), and the ``event`` name when it has one."""
    return {"type": "object", "description": description, "required": ["data"],
            "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"},
                           "retry": {"type": "integer"}}}


def success(model: type[BaseModel], *, stream: str | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entry for a 200 that is ``model`` as JSON, or (``stream``) server-sent events
    when the request sets ``stream: true``."""
    entry: dict[str, Any] = {"model": model, "description": "Successful Response"}
    if stream:
        entry["content"] = {SSE: {"schema": sse_event(stream)}}
    return {200: entry}


def install(app: FastAPI) -> None:
    """Replaces ``app.openapi`` with the truthful schema (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                                 description=app.description, routes=app.routes)
            app.openapi_schema = truthful(schema, app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def api_routes(app: FastAPI) -> list[Any]:
    """The app's API routes as the schema sees them (with their routers' prefixes and dependencies)."""
    if not hasattr(routing, "iter_route_contexts"):  # FastAPI before 0.160 (the vLLM venv's): routes are flat
        return [r for r in app.routes if isinstance(r, routing.APIRoute) and r.include_in_schema]
    return [rc for rc in routing.iter_route_contexts(app.routes)
            if isinstance(rc.original_route, routing.APIRoute) and rc.include_in_schema]


def documented_errors(route: Any) -> set[int]:
    """The error statuses that follow from how ``route`` (an ``api_routes`` entry) is built."""
    from llmserve.server.auth import require_admin, require_api_key
    from llmserve.server.ratelimit import rate_limit

    calls = {dep.call for dep in _all_dependencies(route.dependant)}
    statuses = {500}
    if route.body_field is not None:
        statuses |= {400, 413}
    if require_api_key in calls or rate_limit in calls:
        statuses.add(401)
    if rate_limit in calls:
        statuses.add(429)
    if require_admin in calls:
        statuses |= {401, 403}
    return statuses


def truthful(schema: dict[str, Any], app: FastAPI) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in _error_schemas().items():
        components.setdefault(name, definition)
    for route in api_routes(app):
        for method in route.methods:
            operation = schema["paths"].get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation answer: llmserve answers 400
            for status in sorted(documented_errors(route)):
                responses.setdefault(str(status), {"description": DESCRIPTIONS[status],
                                                   "content": {"application/json": {"schema": ERROR_REF}}})
            operation["responses"] = dict(sorted(responses.items()))
    text = repr(schema["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{name}'" not in text:
            components.pop(name, None)
    return schema


def _error_schemas() -> dict[str, Any]:
    definition = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = definition.pop("$defs", {})
    return {"ErrorResponse": definition, **defs}


def _all_dependencies(dependant) -> list:
    out = []
    for dep in dependant.dependencies:
        out.append(dep)
        out.extend(_all_dependencies(dep))
    return out
