"""OpenAI-compatible chat completions and model listing."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from llmserve.fanout import collect_choices, first_deltas, interleave, total_usage
from llmserve.server.auth import require_api_key
from llmserve.server.body import JSONBodyRoute
from llmserve.server.convert import (
    chat_sampling,
    chat_tools,
    constraint_of,
    to_messages,
    tool_calls_out,
    tool_delta,
    tool_or_format_constraint,
    usage_info,
)
from llmserve.server.deps import get_model, get_registry
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
from llmserve.server.openapi import errors, success
from llmserve.server.ratelimit import rate_limit
from llmserve.server.sse import DONE, ClientGone, TextEvents, error_event, sse, until_disconnect
from llmserve.structured.tools import Content, ToolPlan, finish_reason, plan_tools, tool_capabilities
from llmserve.types import Delta, Usage

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], route_class=JSONBodyRoute)
CHUNKS = ("with stream: true, 'data: {chat.completion.chunk}' events, an 'error' event if the generation "
          "fails after the first one, then 'data: [DONE]'")


@router.get("/models")
async def list_models(request: Request) -> ModelList:
    cards = []
    for model in get_registry(request).models.values():
        caps = model.engine.capabilities
        cards.append(ModelCard(
            id=model.name, parent=model.parent, engine=model.settings.engine, max_model_len=caps.max_context,
            capabilities={"sampling": sorted(caps.sampling), "structured_outputs": sorted(caps.constraints),
                          "tools": tool_capabilities(caps), "ready": model.ready},
            sampling_defaults=model.sampling_defaults.public(),
            sampling_defaults_source=dict(model.sampling_defaults.sources),
        ))
    return ModelList(data=cards)


@router.post("/chat/completions", response_model=None, dependencies=[Depends(rate_limit)],
             responses={**success(ChatCompletion, stream=CHUNKS), **errors(404, 503)})
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response | ChatCompletion:
    model = get_model(request, body.model)
    sampling = chat_sampling(body, model.sampling_defaults)
    tools = chat_tools(body)
    # the tool-call grammar is built and checked by llguidance in the pool too
    plan = await model.run_blocking(plan_tools, tools, model.engine.capabilities) if tools else None
    constraint = tool_or_format_constraint(plan, constraint_of(body))
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    # rendering and tokenizing run in the app's pool, never on the event loop
    gen = await model.aprepare(to_messages(body.messages, model.name), sampling, request_id=completion_id,
                               constraint=constraint, tools=tools.template_tools() if tools else None)
    gens = model.fan_out(gen, body.n)  # n choices: n engine requests, merged below
    streams = [generation_stream(request, model, g) for g in gens]
    logger.info("chat completion %s: %d prompt tokens, n=%d, stream=%s", completion_id, len(gen.prompt_tokens),
                body.n, body.stream)
    with_logprobs = sampling.logprobs is not None
    if body.stream:
        # admission, validation and the first token of every choice happen before the 200 is committed
        firsts = await first_deltas(streams)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _chat_events(completion_id, model.name, streams, firsts, include_usage, plan, with_logprobs)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        done = await until_disconnect(request, collect_choices(streams))
    except ClientGone:
        logger.info("client left before %s finished; generation aborted", completion_id)
        return Response(status_code=499)
    choices = []
    for i, c in enumerate(done):
        content, calls = plan.parse(c.text) if plan else (c.text, [])
        message = AssistantMessage(content=content or (None if calls else ""), tool_calls=tool_calls_out(calls))
        choices.append(ChatChoice(index=i, message=message, finish_reason=finish_reason(c.finish_reason, calls),
                                  logprobs=chat_logprobs(c.logprobs) if with_logprobs else None))
    return ChatCompletion(id=completion_id, model=model.name, choices=choices,
                          usage=usage_info(total_usage([c.usage for c in done], len(done))))


async def _chat_events(
    completion_id: str, model_name: str, streams: list[AsyncIterator[Delta]], firsts: list[Delta],
    include_usage: bool, plan: ToolPlan | None = None, with_logprobs: bool = False,
) -> AsyncIterator[str]:
    """The SSE events of ``len(streams)`` choices, merged as their deltas come."""
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
    parsers = [plan.stream() if plan else None for _ in streams]
    merged = interleave(streams, firsts)
    try:
        for i in range(len(streams)):
            yield chunk(i, DeltaMessage(role="assistant", content=""))
        async for i, delta in merged:
            parser = parsers[i]
            if with_logprobs and delta.logprobs and parser is None:  # each chunk carries its own tokens'
                yield chunk(i, DeltaMessage(content=delta.text), logprobs=chat_logprobs(delta.logprobs))
            elif parser is not None:  # tool calls are parsed out of the text (structured/tools/parser.py)
                if with_logprobs and delta.logprobs:
                    yield chunk(i, DeltaMessage(), logprobs=chat_logprobs(delta.logprobs))
                for event in parser.feed(delta.text) + (parser.finish() if delta.finish_reason else []):
                    yield content[i](event.text) if isinstance(event, Content) else chunk(i, tool_delta(event))
            elif delta.text:
                yield content[i](delta.text)
            if delta.finish_reason is not None:
                usages[i] = delta.usage
                yield chunk(i, DeltaMessage(), finish_reason(delta.finish_reason, parser.calls if parser else []))
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
