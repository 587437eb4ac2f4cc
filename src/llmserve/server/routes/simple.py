"""The simple API: ``POST /chat`` (one JSON answer) and ``POST /chat_stream`` (SSE, a token piece
per event). A body is ``{"text": "..."}`` or ``{"messages": [...]}`` plus optional sampling
fields; ``/ws`` (routes/ws.py) takes the same bodies.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, model_validator
from starlette.requests import HTTPConnection

from llmserve.chat_model import AsyncChatModel
from llmserve.errors import LLMServeError
from llmserve.sampling_defaults import DEFAULTABLE, SamplingDefaults
from llmserve.server.auth import require_api_key
from llmserve.server.body import JSONBodyRoute
from llmserve.server.convert import to_messages
from llmserve.server.deps import get_registry
from llmserve.server.errors import error_payload
from llmserve.server.protocol import ChatMessage, Strict
from llmserve.server.generation import collect, generation_stream
from llmserve.server.openapi import SSE, errors, sse_event, success
from llmserve.server.ratelimit import rate_limit
from llmserve.server.sse import ClientGone, until_disconnect
from llmserve.types import Delta, GenerationRequest, SamplingParams, Usage

logger = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key)], route_class=JSONBodyRoute)


class SimpleChatRequest(Strict):
    """A prompt as ``text`` (one user message) or OpenAI-style ``messages``, plus sampling."""

    text: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    # sampling: unset (absent or null) takes the model's default (sampling_defaults.py)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    stop: str | list[str] | None = Field(None)
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)

    @model_validator(mode="after")
    def _one_prompt(self) -> SimpleChatRequest:
        if (self.text is None) == (self.messages is None):
            raise ValueError("send exactly one of 'text' or 'messages'")
        if isinstance(self.stop, list) and len(self.stop) > 16:
            raise ValueError("stop takes at most 16 sequences")
        return self

    def sampling(self, defaults: SamplingDefaults) -> SamplingParams:
        """What the body sets, the model's ``defaults`` for the rest."""
        return defaults.resolve(self.model_dump(include=set(DEFAULTABLE)))

    def prompt_messages(self, model_name: str) -> list[Any]:
        if self.messages is not None:
            return to_messages(self.messages, model_name)
        return [{"role": "user", "content": self.text}]


class SimpleUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SimpleChatResponse(BaseModel):
    """The answer of ``POST /chat``."""

    result: str
    finish_reason: Literal["stop", "length", "abort"] | None = None
    model: str
    usage: SimpleUsage | None = None


STREAM_EVENTS = ("'data: {\"text\": piece}' per token piece, then 'event: end' with "
                 "{\"finish_reason\", \"usage\"}; a failure after the first piece is an 'event: error' "
                 "(the OpenAI error body) just before the end")


async def start_generation(
    conn: HTTPConnection, body: SimpleChatRequest
) -> tuple[AsyncChatModel, GenerationRequest, AsyncIterator[Delta]]:
    """Validates and renders ``body`` (in the app's pool); the deltas charge their tokens to the
    caller's rate limit."""
    model = get_registry(conn).get(body.model)
    gen = await model.aprepare(body.prompt_messages(model.name), body.sampling(model.sampling_defaults),
                               request_id=f"chat-{uuid.uuid4().hex}")
    logger.info("simple chat %s: %d prompt tokens", gen.request_id, len(gen.prompt_tokens))
    return model, gen, generation_stream(conn, model, gen)


def usage_dict(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


@router.post("/chat", dependencies=[Depends(rate_limit)], response_model=None,
             responses={**success(SimpleChatResponse), **errors(404, 503)})
async def chat(body: SimpleChatRequest, request: Request) -> Response | SimpleChatResponse:
    """``{"result": text, "finish_reason": ..., "model": ..., "usage": {...}}``."""
    model, gen, deltas = await start_generation(request, body)
    try:
        text, last = await until_disconnect(request, collect(deltas))
    except ClientGone:
        logger.info("client left before %s finished; generation aborted", gen.request_id)
        return Response(status_code=499)
    reason = last.finish_reason.value if last.finish_reason else None
    return SimpleChatResponse(result=text, finish_reason=reason, model=model.name, usage=usage_dict(last.usage))


@router.post("/chat_stream", dependencies=[Depends(rate_limit)], response_model=None,
             response_class=StreamingResponse,
             responses={200: {"description": "Server-sent events",
                              "content": {SSE: {"schema": sse_event(STREAM_EVENTS)}}},
                        **errors(404, 503)})
async def chat_stream(body: SimpleChatRequest, request: Request) -> StreamingResponse:
    """SSE: ``data: {"text": piece}`` per token piece, then ``event: end`` with the finish reason
    and usage; a failure after the first event is an ``event: error`` just before the end."""
    _, _, deltas = await start_generation(request, body)
    try:  # admission and the first token happen before the 200 is committed
        first = await anext(deltas)
    except BaseException:
        await deltas.aclose()
        raise
    return StreamingResponse(_events(first, deltas), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _event(data: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _events(first: Delta, deltas: AsyncIterator[Delta]) -> AsyncIterator[str]:
    end: dict[str, Any] = {"finish_reason": None, "usage": None}
    try:
        delta: Delta | None = first
        while delta is not None:
            if delta.text:
                yield _event({"text": delta.text})
            if delta.finish_reason is not None:
                end = {"finish_reason": delta.finish_reason.value, "usage": usage_dict(delta.usage)}
                break
            delta = await anext(deltas, None)
    except LLMServeError as exc:
        logger.warning("simple stream failed: %s", exc.message)
        yield _event(error_payload(exc), "error")
    except Exception:
        logger.exception("simple stream failed")
        yield _event({"error": {"message": "internal server error", "type": "server_error", "param": None,
                                "code": None}}, "error")
    finally:
        await deltas.aclose()
    yield _event(end, "end")
