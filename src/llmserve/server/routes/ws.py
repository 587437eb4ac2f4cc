"""WebSockets: ``/ws`` (simple: one prompt at a time, tokens back) and ``/v1/chat/ws`` (OpenAI-style
chat completions, several requests in flight per socket, each cancellable). The protocols are
documented in docs/websocket.md.

Both authenticate at the handshake (``Authorization``/``x-api-key`` header or ``?api_key=``);
a bad key is refused with an HTTP 401 in OpenAI shape. After that, every error is a message on
the socket, and a closed socket aborts its generations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError

from llmserve.errors import InvalidRequest, LLMServeError, Overloaded, RateLimited, RequestTooLarge, UnsupportedParameter
from llmserve.server.auth import Identity, require_api_key
from llmserve.server.body import load_json, parse_off_loop
from llmserve.server.convert import chat_sampling, chat_tools, constraint_of, to_messages, usage_info
from llmserve.server.deps import get_rate_limiter, get_registry, get_settings
from llmserve.server.errors import error_payload, error_response, validation_message
from llmserve.server.protocol import ChatCompletionChunk, ChatCompletionRequest, ChunkChoice, DeltaMessage
from llmserve.server.generation import generation_stream
from llmserve.server.ratelimit import format_duration
from llmserve.server.routes.simple import SimpleChatRequest, start_generation, usage_dict
from llmserve.types import Delta

logger = logging.getLogger(__name__)
router = APIRouter()


class SocketClosed(Exception):
    """The peer is gone; stop quietly."""


class Channel:
    """Sends JSON messages on one socket, one at a time, whichever task sends them."""

    def __init__(self, websocket: WebSocket):
        self.websocket = websocket
        self._lock = asyncio.Lock()
        self.closed = False

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            raise SocketClosed()
        async with self._lock:
            try:
                await self.websocket.send_text(json.dumps(message, ensure_ascii=False))
            except Exception as exc:  # the transport's own disconnect errors differ by server
                self.closed = True
                raise SocketClosed() from exc

    async def receive(self) -> str | None:
        """The next text (or UTF-8 binary) frame; None once the client has closed."""
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            self.closed = True
            return None
        if message.get("text") is not None:
            return message["text"]
        return (message.get("bytes") or b"").decode("utf-8", errors="replace")


async def accept(websocket: WebSocket) -> Identity | None:
    """Authenticates the handshake; refuses it with an OpenAI-shaped 401 when the key is bad."""
    try:
        identity = await require_api_key(websocket)
    except LLMServeError as exc:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(error_response(exc))
        else:
            await websocket.close(code=1008, reason=exc.message[:120])
        return None
    await websocket.accept()
    return identity


def error_message(exc: LLMServeError, **tags: Any) -> dict[str, Any]:
    message = {"type": "error", **tags, "status": exc.status_code, **error_payload(exc)}
    if isinstance(exc, (Overloaded, RateLimited)):
        message["retry_after"] = exc.retry_after
    return message


async def admit(websocket: WebSocket, identity: Identity) -> None:
    """One request's rate-limit admission (a WebSocket request counts like an HTTP one)."""
    quota = await get_rate_limiter(websocket).admit(identity)
    if quota.blocked_by is not None:
        raise RateLimited(f"Rate limit reached for {quota.blocked_by} per minute on this API key. "
                          f"Try again in {format_duration(quota.retry_after)}.", retry_after=quota.retry_after)


async def parse_json(websocket: WebSocket, raw: str) -> Any:
    """A frame's JSON (JSONDecodeError when it is none), bounded as HTTP bodies are, parsed in
    the app's pool when large."""
    limit = get_settings(websocket).max_request_bytes
    if len(raw.encode()) > limit:
        raise RequestTooLarge(f"message is larger than the limit of {limit} bytes")
    return await parse_off_loop(websocket, raw, load_json)


def validated(model: type, data: Any):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc.errors())
        raise InvalidRequest(message, param=param) from None


# -- /ws --------------------------------------------------------------------------------------
@router.websocket("/ws")
async def simple_ws(websocket: WebSocket) -> None:
    """Each frame is a prompt: plain text, or a JSON object like the body of ``POST /chat``. The
    reply is ``{"type": "token", "text"}`` messages then ``{"type": "end", ...}`` (or one
    ``{"type": "error", ...}``). Prompts sent meanwhile wait their turn."""
    identity = await accept(websocket)
    if identity is None:
        return
    channel = Channel(websocket)
    prompts: asyncio.Queue[str] = asyncio.Queue()

    async def read() -> None:
        while (raw := await channel.receive()) is not None:
            prompts.put_nowait(raw)

    reader = asyncio.create_task(read())
    try:
        while True:
            nxt = asyncio.ensure_future(prompts.get())
            await asyncio.wait({nxt, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                break
            answer = asyncio.create_task(_answer(websocket, channel, identity, nxt.result()))
            await asyncio.wait({answer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():  # the client left mid-answer: abort the generation
                answer.cancel()
                await asyncio.gather(answer, return_exceptions=True)
                break
            if answer.exception() is not None:
                break
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _answer(websocket: WebSocket, channel: Channel, identity: Identity, raw: str) -> None:
    try:
        try:
            data = await parse_json(websocket, raw)
        except json.JSONDecodeError:
            data = None
        body = validated(SimpleChatRequest, data if isinstance(data, dict) else {"text": raw})
        await admit(websocket, identity)
        _, _, deltas = await start_generation(websocket, body)
        try:
            async for delta in deltas:
                if delta.text:
                    await channel.send({"type": "token", "text": delta.text})
                if delta.finish_reason is not None:
                    await channel.send({"type": "end", "finish_reason": delta.finish_reason.value,
                                        "usage": usage_dict(delta.usage)})
                    return
        finally:
            await deltas.aclose()
        await channel.send({"type": "end", "finish_reason": None, "usage": None})
    except LLMServeError as exc:
        await channel.send(error_message(exc))
    except SocketClosed:
        raise
    except Exception:
        logger.exception("websocket prompt failed")
        await channel.send({"type": "error", "status": 500, "error": {
            "message": "internal server error", "type": "server_error", "param": None, "code": None}})


# -- /v1/chat/ws --------------------------------------------------------------------------------
@router.websocket("/v1/chat/ws")
async def chat_ws(websocket: WebSocket) -> None:
    identity = await accept(websocket)
    if identity is None:
        return
    session = ChatSession(websocket, identity)
    try:
        while (raw := await session.channel.receive()) is not None:
            await session.handle(raw)
    except SocketClosed:
        pass
    finally:
        await session.aclose()


class ChatSession:
    """The requests in flight on one ``/v1/chat/ws`` socket, by client-chosen id."""

    def __init__(self, websocket: WebSocket, identity: Identity):
        self.websocket = websocket
        self.identity = identity
        self.channel = Channel(websocket)
        self.tasks: dict[str, asyncio.Task] = {}
        self.progress: dict[str, list[int]] = {}  # id -> [prompt tokens, completion tokens so far]
        self.finishing: set[str] = set()  # ids whose final message is being sent (too late to cancel)

    async def handle(self, raw: str) -> None:
        try:
            message = await parse_json(self.websocket, raw)
        except json.JSONDecodeError:
            return await self.channel.send(error_message(InvalidRequest("message is not valid JSON"), id=None))
        except LLMServeError as exc:
            return await self.channel.send(error_message(exc, id=None))
        if not isinstance(message, dict):
            return await self.channel.send(error_message(InvalidRequest("message must be a JSON object"), id=None))
        kind, req_id = message.pop("type", None), message.pop("id", None)
        if not isinstance(req_id, (str, int)) or isinstance(req_id, bool):
            return await self.channel.send(error_message(
                InvalidRequest("'id' (a string or integer) is required", param="id"), id=req_id))
        if kind == "cancel":
            return await self.cancel(req_id)
        if kind != "request":
            return await self.channel.send(error_message(
                InvalidRequest(f"unknown message type {kind!r}: use 'request' or 'cancel'", param="type"), id=req_id))
        key = str(req_id)
        if key in self.tasks:
            return await self.channel.send(error_message(
                InvalidRequest(f"request {req_id!r} is already in flight on this socket", param="id"), id=req_id))
        task = asyncio.create_task(self._run(req_id, message))
        self.tasks[key] = task
        task.add_done_callback(lambda _: self._forget(key))

    def _forget(self, key: str) -> None:
        self.tasks.pop(key, None)
        self.progress.pop(key, None)
        self.finishing.discard(key)

    async def cancel(self, req_id: str | int) -> None:
        """Stops the request now and answers ``done`` with ``finish_reason: "cancelled"``; ids not
        in flight (finished already, or never sent) are ignored."""
        key = str(req_id)
        task = self.tasks.get(key)
        if task is None or key in self.finishing or task.done():
            return
        prompt, completion = self.progress.get(key, [0, 0])
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # its generation is aborted by then
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        await self.channel.send({"type": "done", "id": req_id, "finish_reason": "cancelled", "usage": usage})

    async def _run(self, req_id: str | int, body: dict[str, Any]) -> None:
        try:
            await self._generate(req_id, body)
        except LLMServeError as exc:
            self.finishing.add(str(req_id))
            await self.channel.send(error_message(exc, id=req_id))
        except SocketClosed:
            pass
        except Exception:
            logger.exception("websocket request %r failed", req_id)
            self.finishing.add(str(req_id))
            await self.channel.send({"type": "error", "id": req_id, "status": 500, "error": {
                "message": "internal server error", "type": "server_error", "param": None, "code": None}})

    async def _generate(self, req_id: str | int, body: dict[str, Any]) -> None:
        request = validated(ChatCompletionRequest, {**body, "stream": True})
        tools = chat_tools(request)
        if tools is not None and tools.active:  # this socket streams text; tools live on /v1/chat/completions
            raise UnsupportedParameter("tools are not supported over the WebSocket; use /v1/chat/completions",
                                       param="tools")
        for name, value in (("n", request.n != 1), ("logprobs", request.logprobs)):
            if value:
                raise UnsupportedParameter(f"{name} is not supported over the websocket; use /v1/chat/completions",
                                           param=name)
        await admit(self.websocket, self.identity)
        model = get_registry(self.websocket).get(request.model)
        sampling = chat_sampling(request, model.sampling_defaults)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        gen = await model.aprepare(to_messages(request.messages, model.name), sampling, request_id=completion_id,
                                   constraint=constraint_of(request))
        progress = self.progress.setdefault(str(req_id), [len(gen.prompt_tokens), 0])
        deltas = generation_stream(self.websocket, model, gen)
        logger.info("websocket chat %s: %d prompt tokens", completion_id, len(gen.prompt_tokens))
        created = int(time.time())

        async def chunk(delta: DeltaMessage, finish: str | None = None) -> None:
            body = ChatCompletionChunk(id=completion_id, created=created, model=model.name,
                                       choices=[ChunkChoice(delta=delta, finish_reason=finish)])
            await self.channel.send({"type": "chunk", "id": req_id, "chunk": body.model_dump(mode="json")})

        last = Delta()
        try:
            first = True
            async for delta in deltas:
                progress[1] += len(delta.token_ids)
                if first:  # after admission and the first token, as for SSE
                    await chunk(DeltaMessage(role="assistant", content=""))
                    first = False
                if delta.text:
                    await chunk(DeltaMessage(content=delta.text))
                last = delta
                if delta.finish_reason is not None:
                    break
        finally:
            await deltas.aclose()
        self.finishing.add(str(req_id))
        reason = last.finish_reason.value if last.finish_reason else None
        await chunk(DeltaMessage(), reason)
        await self.channel.send({"type": "done", "id": req_id, "finish_reason": reason,
                                 "usage": usage_info(last.usage).model_dump(mode="json")})

    async def aclose(self) -> None:
        """The socket is gone: abort everything still generating."""
        self.channel.closed = True
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
