"""``POST /v1/completions``: raw prompts (no chat template), one or many, JSON or SSE."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from llmserve.chat_model import AsyncChatModel
from llmserve.errors import InvalidRequest
from llmserve.server.auth import require_api_key
from llmserve.server.body import JSONBodyRoute
from llmserve.server.convert import constraint_of, sampling_from, usage_info
from llmserve.server.deps import get_model
from llmserve.server.generation import collect, generation_stream
from llmserve.server.protocol import CompletionChoice, CompletionRequest, TextCompletion
from llmserve.server.openapi import errors, success
from llmserve.server.ratelimit import rate_limit
from llmserve.server.sse import DONE, ClientGone, error_event, sse, until_disconnect
from llmserve.types import Delta, Usage

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], route_class=JSONBodyRoute)

MAX_PROMPTS = 64
CHUNKS = ("with stream: true, 'data: {text_completion}' events, an 'error' event if the generation fails "
          "after the first one, then 'data: [DONE]'")


@router.post("/completions", response_model=None, dependencies=[Depends(rate_limit)],
             responses={**success(TextCompletion, stream=CHUNKS), **errors(404, 503)})
async def completions(body: CompletionRequest, request: Request) -> Response | TextCompletion:
    model = get_model(request, body.model)
    sampling = sampling_from(body, model.sampling_defaults)
    constraint = constraint_of(body)
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    try:
        gens = [model.build_request(tokens, sampling, request_id=f"{completion_id}-{i}", constraint=constraint)
                for i, tokens in enumerate(prompt_tokens(model, body.prompt))]
    except InvalidRequest as exc:  # build_request speaks of chat messages; here they are prompts
        if exc.param == "messages":
            exc.param = "prompt"
        raise
    streams = [generation_stream(request, model, gen) for gen in gens]
    logger.info("completion %s: %d prompt(s), %d prompt tokens, stream=%s", completion_id, len(gens),
                sum(len(g.prompt_tokens) for g in gens), body.stream)
    if body.stream:
        firsts = await _first_deltas(streams)  # admission and first tokens before the 200
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _events(completion_id, model.name, streams, firsts, include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        results = await until_disconnect(request, _collect_all(streams))
    except ClientGone:
        logger.info("client left before %s finished; generation aborted", completion_id)
        return Response(status_code=499)
    choices = [CompletionChoice(index=i, text=text, finish_reason=_reason(last)) for i, (text, last) in enumerate(results)]
    return TextCompletion(id=completion_id, model=model.name, choices=choices,
                          usage=usage_info(_total([last.usage for _, last in results])))


def prompt_tokens(model: AsyncChatModel, prompt: str | list) -> list[list[int]]:
    """Token ids of every prompt: strings are tokenized with the model's special tokens (BOS)."""
    if isinstance(prompt, str):
        prompts: Sequence = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [prompt]
    else:
        prompts = prompt
    if not prompts:
        raise InvalidRequest("prompt must not be empty", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidRequest(f"at most {MAX_PROMPTS} prompts per request", param="prompt")
    return [model.engine.tokenize(p, add_special=True) if isinstance(p, str) else list(p) for p in prompts]


def _reason(delta: Delta) -> str | None:
    return delta.finish_reason.value if delta.finish_reason is not None else None


def _total(usages: Sequence[Usage | None]) -> Usage:
    done = [u for u in usages if u is not None]
    return Usage(sum(u.prompt_tokens for u in done), sum(u.completion_tokens for u in done),
                 sum(u.cached_tokens for u in done))


async def _collect_all(streams: list[AsyncIterator[Delta]]) -> list[tuple[str, Delta]]:
    """Every prompt concurrently; the first failure cancels the others."""
    tasks = [asyncio.ensure_future(collect(s)) for s in streams]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _first_deltas(streams: list[AsyncIterator[Delta]]) -> list[Delta]:
    tasks = [asyncio.ensure_future(anext(s)) for s in streams]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in streams:
            await s.aclose()
        raise


async def _interleave(streams: list[AsyncIterator[Delta]], firsts: list[Delta]) -> AsyncIterator[tuple[int, Delta]]:
    """(prompt index, delta) from every stream as they come; the first error stops them all."""
    for i, delta in enumerate(firsts):
        yield i, delta
    queue: asyncio.Queue[tuple[int, Delta | Exception | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[Delta]) -> None:
        try:
            async for delta in stream:
                queue.put_nowait((i, delta))
            queue.put_nowait((i, None))
        except Exception as exc:
            queue.put_nowait((i, exc))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams) if firsts[i].finish_reason is None]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in streams:
            await s.aclose()


async def _events(completion_id: str, model_name: str, streams: list[AsyncIterator[Delta]], firsts: list[Delta],
                  include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())
    usages: list[Usage | None] = [None] * len(streams)
    merged = _interleave(streams, firsts)
    try:
        async for i, delta in merged:
            if delta.finish_reason is not None:
                usages[i] = delta.usage
            if delta.text or delta.finish_reason is not None:
                yield sse(TextCompletion(
                    id=completion_id, created=created, model=model_name,
                    choices=[CompletionChoice(index=i, text=delta.text, finish_reason=_reason(delta))],
                ))
        if include_usage:
            yield sse(TextCompletion(id=completion_id, created=created, model=model_name, choices=[],
                                     usage=usage_info(_total(usages))))
    except Exception as exc:  # after the 200: report in-band, then end the stream properly
        yield error_event(exc, completion_id)
    finally:
        await merged.aclose()
    yield DONE
