"""One batch line through the app's own routes, in process: the same validation, model routing,
sampling, structured output and tools as a live request of that endpoint, with no socket.

The request carries an ``InternalCall`` in its ASGI scope (which no client can set): who the batch
belongs to, and the priority its generations get. The server's auth reads the caller from it,
rate limits skip it (batch work has its own budget, as OpenAI's does), and ``generation_stream``
gives its generations the batch priority.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from llmserve.types import PRIORITY_BATCH

SCOPE_KEY = "llmserve.internal"


@dataclass(frozen=True)
class InternalCall:
    owner: str  # the identity subject that created the batch
    priority: int = PRIORITY_BATCH


@dataclass(frozen=True)
class Response:
    status_code: int
    body: Any  # parsed JSON (or the raw text when a route answered something else)
    request_id: str


def internal_call(scope: dict[str, Any]) -> InternalCall | None:
    return scope.get(SCOPE_KEY)


async def call(app, caller: InternalCall, path: str, body: dict[str, Any], request_id: str) -> Response:
    """POSTs ``body`` to ``path`` on the ASGI ``app`` and returns its whole answer."""
    payload = json.dumps(body).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "client": ("batch", 0), "server": ("llmserve-batch", 0), "state": {},
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                    (b"x-request-id", request_id.encode())],
        SCOPE_KEY: caller,
    }
    sent = False
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await never.wait()  # the "client" stays until the answer is complete (cancelled with the line)
        return {"type": "http.disconnect"}

    status = 500
    headers: dict[bytes, bytes] = {}
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = dict(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    raw = b"".join(chunks)
    try:
        parsed: Any = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return Response(status, parsed, headers.get(b"x-request-id", request_id.encode()).decode("latin-1"))
