"""The one way a route runs a generation: measured for /metrics, charged to the caller's rate limit."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from starlette.requests import HTTPConnection

from llmserve.batch.dispatch import internal_call
from llmserve.chat_model import AsyncChatModel
from llmserve.server.drain import until_drained
from llmserve.server.metrics import observe
from llmserve.server.ratelimit import meter
from llmserve.types import Delta, GenerationRequest


def generation_stream(conn: HTTPConnection, model: AsyncChatModel, request: GenerationRequest) -> AsyncIterator[Delta]:
    """``model.agenerate(request)``, observed and metered, ended by a server drain's deadline;
    batch lines run at batch priority. Closing it aborts the generation."""
    internal = internal_call(conn.scope)
    if internal is not None:
        request = dataclasses.replace(request, priority=internal.priority)
    deltas = meter(conn, len(request.prompt_tokens), observe(conn, model, request))
    drain = getattr(conn.app.state, "drain", None)
    return deltas if drain is None else until_drained(drain, deltas)


async def collect(deltas: AsyncIterator[Delta]) -> tuple[str, Delta]:
    """The whole text and the last delta (finish reason, usage); closes the stream whatever happens."""
    parts: list[str] = []
    last = Delta()
    try:
        async for delta in deltas:
            parts.append(delta.text)
            last = delta
    finally:
        await deltas.aclose()
    return "".join(parts), last
