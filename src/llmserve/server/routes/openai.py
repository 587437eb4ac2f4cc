"""OpenAI-compatible chat completions and model listing."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from llmserve.server.auth import require_api_key
from llmserve.server.convert import chat_sampling, to_message, usage_info
from llmserve.server.deps import get_model, get_registry
from llmserve.fanout import collect_choices, first_deltas, interleave, total_usage
from llmserve.server.generation import generation_stream
from llmserve.server.logprobs import chat_logprobs
from llmserve.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaMessage,
    ModelCard,
    ModelList,
)
from llmserve.server.ratelimit import rate_limit
from llmserve.server.sse import DONE, ClientGone, TextEvents, error_event, sse, until_disconnect
from llmserve.types import Delta, FinishReason, Usage

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@router.get("/models")
async def list_models(request: Request) -> ModelList:
    cards = []
    for model in get_registry(request).models.values():
        caps = model.engine.capabilities
        cards.append(ModelCard(
            id=model.name, engine=model.settings.engine, max_model_len=caps.max_context,
            capabilities={"sampling": sorted(caps.sampling), "ready": model.ready},
        ))
    return ModelList(data=cards)


@router.post("/chat/completions", response_model=None, dependencies=[Depends(rate_limit)])
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response | ChatCompletion:
    model = get_model(request, body.model)
    sampling = chat_sampling(body)
    prompt = model.render([to_message(m) for m in body.messages])
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    gens = model.build_requests(prompt, sampling, request_id=completion_id, n=body.n)
    streams = [generation_stream(request, model, gen) for gen in gens]
    logger.info("chat completion %s: %d prompt tokens, n=%d, stream=%s", completion_id, len(gens[0].prompt_tokens),
                body.n, body.stream)
    with_logprobs = sampling.logprobs is not None
    if body.stream:
        # admission, validation and the first token of every choice happen before the 200 is committed
        firsts = await first_deltas(streams)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _chat_events(completion_id, model.name, streams, firsts, include_usage, with_logprobs)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        done = await until_disconnect(request, collect_choices(streams))
    except ClientGone:
        logger.info("client left before %s finished; generation aborted", completion_id)
        return Response(status_code=499)
    return ChatCompletion(
        id=completion_id,
        model=model.name,
        choices=[ChatChoice(index=i, message=AssistantMessage(content=c.text), finish_reason=_reason(c.finish_reason),
                            logprobs=chat_logprobs(c.logprobs) if with_logprobs else None)
                 for i, c in enumerate(done)],
        usage=usage_info(total_usage([c.usage for c in done], len(done))),
    )


def _reason(reason: FinishReason | None) -> str | None:
    return reason.value if reason is not None else None


async def _chat_events(
    completion_id: str, model_name: str, streams: list[AsyncIterator[Delta]], firsts: list[Delta],
    include_usage: bool, with_logprobs: bool,
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(i: int, delta: DeltaMessage, finish: str | None = None, logprobs: ChoiceLogprobs | None = None) -> str:
        return sse(ChatCompletionChunk(
            id=completion_id, created=created, model=model_name,
            choices=[ChunkChoice(index=i, delta=delta, finish_reason=finish, logprobs=logprobs)],
        ))

    content = [TextEvents(ChatCompletionChunk(
        id=completion_id, created=created, model=model_name,
        choices=[ChunkChoice(index=i, delta=DeltaMessage(content=TextEvents.MARK))],
    )) for i in range(len(streams))]
    usages: list[Usage | None] = [None] * len(streams)
    merged = interleave(streams, firsts)
    try:
        for i in range(len(streams)):
            yield chunk(i, DeltaMessage(role="assistant", content=""))
        async for i, delta in merged:
            if with_logprobs and delta.logprobs:  # each chunk carries its own tokens' logprobs
                yield chunk(i, DeltaMessage(content=delta.text), logprobs=chat_logprobs(delta.logprobs))
            elif delta.text:
                yield content[i](delta.text)
            if delta.finish_reason is not None:
                usages[i] = delta.usage
                yield chunk(i, DeltaMessage(), delta.finish_reason.value)
        if include_usage:
            yield sse(ChatCompletionChunk(
                id=completion_id, created=created, model=model_name, choices=[],
                usage=usage_info(total_usage(usages, len(usages))),
            ))
    except Exception as exc:  # after the 200: report in-band, then end the stream properly
        yield error_event(exc, completion_id)
    finally:
        await merged.aclose()
    yield DONE
