"""OpenAI-compatible chat completions and model listing."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

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
from llmserve.server.generation import collect, generation_stream
from llmserve.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
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
            id=model.name, engine=model.settings.engine, max_model_len=caps.max_context,
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
    deltas = generation_stream(request, model, gen)
    logger.info("chat completion %s: %d prompt tokens, stream=%s", completion_id, len(gen.prompt_tokens), body.stream)
    if body.stream:
        # admission, validation and the first token happen before the 200 is committed
        try:
            first = await anext(deltas)
        except BaseException:
            await deltas.aclose()
            raise
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _chat_events(completion_id, model.name, first, deltas, include_usage, plan)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        text, last = await until_disconnect(request, collect(deltas))
    except ClientGone:
        logger.info("client left before %s finished; generation aborted", completion_id)
        return Response(status_code=499)
    content, calls = plan.parse(text) if plan else (text, [])
    message = AssistantMessage(content=content or (None if calls else ""), tool_calls=tool_calls_out(calls))
    return ChatCompletion(
        id=completion_id,
        model=model.name,
        choices=[ChatChoice(message=message, finish_reason=finish_reason(last.finish_reason, calls))],
        usage=usage_info(last.usage),
    )


async def _chat_events(
    completion_id: str, model_name: str, first: Delta, deltas: AsyncIterator[Delta], include_usage: bool,
    plan: ToolPlan | None = None,
) -> AsyncIterator[str]:
    created = int(time.time())

    def chunk(delta: DeltaMessage, finish: str | None = None) -> str:
        return sse(ChatCompletionChunk(
            id=completion_id, created=created, model=model_name,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],
        ))

    content = TextEvents(ChatCompletionChunk(
        id=completion_id, created=created, model=model_name,
        choices=[ChunkChoice(delta=DeltaMessage(content=TextEvents.MARK))],
    ))
    usage: Usage | None = None
    parser = plan.stream() if plan else None
    try:
        yield chunk(DeltaMessage(role="assistant", content=""))
        delta: Delta | None = first
        while delta is not None:
            if parser is not None:  # tool calls are parsed out of the text (structured/tools/parser.py)
                for event in parser.feed(delta.text) + (parser.finish() if delta.finish_reason else []):
                    yield content(event.text) if isinstance(event, Content) else chunk(tool_delta(event))
            elif delta.text:
                yield content(delta.text)
            if delta.finish_reason is not None:
                usage = delta.usage
                yield chunk(DeltaMessage(), finish_reason(delta.finish_reason, parser.calls if parser else []))
                break
            delta = await anext(deltas, None)
        if include_usage:
            yield sse(ChatCompletionChunk(
                id=completion_id, created=created, model=model_name, choices=[], usage=usage_info(usage),
            ))
    except Exception as exc:  # after the 200: report in-band, then end the stream properly
        yield error_event(exc, completion_id)
    finally:
        await deltas.aclose()
    yield DONE
