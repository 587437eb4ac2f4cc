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


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """Message and param for pydantic errors (FastAPI's or a model's own ``ValidationError``)."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if first.get("type") == "missing":
        return f"missing required parameter: {param}", param
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else msg), param


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
