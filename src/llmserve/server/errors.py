"""The one place llmserve errors become HTTP: OpenAI-shaped JSON with the right status."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmserve.errors import InvalidRequest, LLMServeError, Overloaded, RateLimited
from llmserve.server.metrics import record_rejection
from llmserve.server.protocol import ErrorDetail, ErrorResponse

logger = logging.getLogger(__name__)


def error_payload(exc: LLMServeError) -> dict:
    detail = ErrorDetail(message=exc.message, type=exc.error_type, param=exc.param, code=exc.code)
    return ErrorResponse(error=detail).model_dump()


def error_headers(exc: LLMServeError) -> dict[str, str]:
    if isinstance(exc, (Overloaded, RateLimited)):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return {}


def error_response(exc: LLMServeError) -> JSONResponse:
    return JSONResponse(error_payload(exc), status_code=exc.status_code, headers=error_headers(exc))


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    return validation_message(exc.errors())


NOT_AN_OBJECT = {"missing", "model_attributes_type", "dict_type", "model_type"}
BODY_NOT_OBJECT = ("the request body must be a JSON object (sent as 'Content-Type: application/json'), "
                   "not empty, an array or a scalar")


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """Message and param for pydantic errors (FastAPI's or a model's own ``ValidationError``)."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    if _body_not_an_object(errors):
        return BODY_NOT_OBJECT, None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if len(errors) > 1 and loc and loc[0][:1].isupper():  # a union of request models: drop the member's name
        loc = loc[1:]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if first.get("type") == "missing":
        return f"missing required parameter: {param}", param
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    if msg.startswith("[") and param:  # an element of the parameter (content parts): messages.0.content[1]
        where, _, rest = msg.partition(" ")
        return f"{param}{where}: {rest}", param
    return (f"{param}: {msg}" if param else msg), param


def _body_not_an_object(errors: Sequence[Any]) -> bool:
    """The body itself is missing, or JSON that is not an object (for a union of request models,
    every member says so)."""
    for error in errors:
        loc = [p for p in error.get("loc", ()) if p != "body"]
        if error.get("type") not in NOT_AN_OBJECT:
            return False
        if loc and not (len(loc) == 1 and str(loc[0])[:1].isupper()):  # no field, or a model's name
            return False
    return True


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LLMServeError)
    async def _llmserve_error(request: Request, exc: LLMServeError) -> JSONResponse:
        record_rejection(request, exc)
        if exc.status_code >= 500:
            logger.warning("request failed: %s", exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        record_rejection(request, InvalidRequest(message, param=param))
        body = ErrorResponse(error=ErrorDetail(message=message, type="invalid_request_error", param=param))
        return JSONResponse(body.model_dump(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = ErrorResponse(error=ErrorDetail(message=str(exc.detail), type=kind, code=str(exc.status_code)))
        return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        body = ErrorResponse(error=ErrorDetail(message="internal server error", type="server_error"))
        return JSONResponse(body.model_dump(), status_code=500)
