"""JSON request bodies parsed off the event loop, and bounded before anything else reads them.

``JSONBodyRoute`` (the route class of the API routers) parses a body larger than
``INLINE_BYTES`` in the app's ``WorkPool`` (an array element at a time, so that the parsing
thread lets go of the GIL), refuses one nested deeper than ``--max-json-depth`` and a chat with
more messages than any served model's context could hold (each message takes a token at least;
the messages past that are never read), and hands the parsed value to FastAPI, which then
validates it as usual. WebSocket frames go through the same bounds (``parse_off_loop``).
"""

from __future__ import annotations

import email.message
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection

from llmserve.errors import ContextLengthExceeded, InvalidRequest
from llmserve.server.deps import get_settings

INLINE_BYTES = 16 * 1024  # smaller bodies parse in microseconds: not worth a thread hop


def nesting_depth_over(data: Any, limit: int) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` in ``data`` (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def parse_json(raw: bytes | str, *, max_depth: int, max_messages: int | None) -> Any:
    """The parsed body, or InvalidRequest (400) for what cannot be served."""
    try:
        return load_json(raw, max_depth=max_depth, max_messages=max_messages)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None


def load_json(raw: bytes | str, *, max_depth: int, max_messages: int | None) -> Any:
    """``json.loads`` (its JSONDecodeError passes through), then the bounds: InvalidRequest for a
    value nested deeper than ``max_depth``, ContextLengthExceeded for more ``messages`` than
    ``max_messages``. A large body is read a top-level array element at a time (``scan_object``)."""
    try:
        if len(raw) > INLINE_BYTES:
            text = raw.decode(json.detect_encoding(raw)) if isinstance(raw, bytes) else raw
            data = scan_object(text, max_messages)
        else:
            data = json.loads(raw)
    except RecursionError:
        raise InvalidRequest(f"the JSON body nests deeper than {max_depth} levels") from None
    if not isinstance(data, (dict, list)):
        return data
    messages = data.get("messages") if isinstance(data, dict) else None
    if max_messages is not None and isinstance(messages, list) and len(messages) > max_messages:
        raise too_many_messages(max_messages)
    if nesting_depth_over(data, max_depth):
        raise InvalidRequest(f"the JSON body nests deeper than {max_depth} levels")
    return data


def too_many_messages(limit: int) -> ContextLengthExceeded:
    return ContextLengthExceeded(
        f"This model's maximum context length is {limit} tokens. However, your request has more "
        f"than {limit} messages, and every message takes a token at least. Please reduce the number "
        "of messages.", param="messages")


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def scan_object(text: str, max_messages: int | None) -> Any:
    """``json.loads(text)``, but a top-level object's array values are decoded an element at a
    time: a thread parsing a long array lets the event loop run between elements (one
    ``json.loads`` call would hold the GIL for all of it), and ``messages`` stops being read
    past ``max_messages`` elements (ContextLengthExceeded)."""
    pos = _WS.match(text).end()
    if not text.startswith("{", pos):
        return json.loads(text)
    out: dict[str, Any] = {}
    pos = _WS.match(text, pos + 1).end()
    if text.startswith("}", pos):
        return _end(text, pos + 1, out)
    while True:
        if not text.startswith('"', pos):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
        key, pos = _DECODER.raw_decode(text, pos)
        pos = _WS.match(text, pos).end()
        if not text.startswith(":", pos):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
        pos = _WS.match(text, pos + 1).end()
        if text.startswith("[", pos):
            out[key], pos = _scan_array(text, pos, max_messages if key == "messages" else None)
        else:
            out[key], pos = _DECODER.raw_decode(text, pos)
        pos = _WS.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _WS.match(text, pos + 1).end()
        elif text.startswith("}", pos):
            return _end(text, pos + 1, out)
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)


def _scan_array(text: str, pos: int, limit: int | None) -> tuple[list[Any], int]:
    items: list[Any] = []
    pos = _WS.match(text, pos + 1).end()
    if text.startswith("]", pos):
        return items, pos + 1
    while True:
        if limit is not None and len(items) >= limit:
            raise too_many_messages(limit)
        item, pos = _DECODER.raw_decode(text, pos)
        items.append(item)
        pos = _WS.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _WS.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            return items, pos + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)


def _end(text: str, pos: int, value: Any) -> Any:
    pos = _WS.match(text, pos).end()
    if pos != len(text):
        raise json.JSONDecodeError("Extra data", text, pos)
    return value


async def parse_off_loop(conn: HTTPConnection, raw: bytes | str, parse: Callable[..., Any] = parse_json) -> Any:
    """``parse(raw)`` with the app's bounds, in the app's pool when ``raw`` is large."""
    limits = {"max_depth": get_settings(conn).max_json_depth, "max_messages": most_messages(conn)}
    if len(raw) > INLINE_BYTES:
        return await conn.app.state.work_pool.run(parse, raw, **limits)
    return parse(raw, **limits)


def most_messages(conn: HTTPConnection) -> int | None:
    """The most messages a chat could have and still fit the largest served context."""
    registry = getattr(conn.app.state, "registry", None)  # absent before the lifespan ran
    contexts = [m.engine.capabilities.max_context for m in registry.models.values() if m.ready] if registry else []
    return max(contexts) if contexts else None


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # FastAPI reads a body without a content type as JSON
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


async def parse_body(request: Request) -> None:
    """Parses a JSON body once, in the pool when large; FastAPI then uses this parse."""
    if request.method not in ("POST", "PUT", "PATCH") or not _is_json(request.headers.get("content-type")):
        return
    raw = await request.body()
    if raw:
        request._json = await parse_off_loop(request, raw)  # Starlette's cache of request.json(), which FastAPI reads


class JSONBodyRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parse_then_handle(request: Request) -> Response:
            await parse_body(request)
            return await handler(request)

        return parse_then_handle

