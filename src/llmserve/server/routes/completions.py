"""``POST /v1/completions``: raw prompts (no chat template), one or many, JSON or SSE."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from llmserve.chat_model import AsyncChatModel
from llmserve.errors import InvalidRequest
from llmserve.server.auth import require_api_key
from llmserve.fanout import collect_choices, first_deltas, interleave, total_usage
from llmserve.server.body import JSONBodyRoute
from llmserve.server.convert import completion_sampling, constraint_of, usage_info
from llmserve.server.deps import get_model
from llmserve.server.generation import generation_stream
from llmserve.server.logprobs import LegacyLogprobs
from llmserve.server.openapi import errors, success
from llmserve.server.protocol import CompletionChoice, CompletionLogprobs, CompletionRequest, TextCompletion
from llmserve.server.ratelimit import rate_limit
from llmserve.server.sse import DONE, ClientGone, error_event, sse, until_disconnect
from llmserve.types import Delta, FinishReason, Usage

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], route_class=JSONBodyRoute)

MAX_PROMPTS = 64
CHUNKS = ("with stream: true, 'data: {text_completion}' events, an 'error' event if the generation fails "
          "after the first one, then 'data: [DONE]'")


@router.post("/completions", response_model=None, dependencies=[Depends(rate_limit)],
             responses={**success(TextCompletion, stream=CHUNKS), **errors(404, 503)})
async def completions(body: CompletionRequest, request: Request) -> Response | TextCompletion:
    model = get_model(request, body.model)
    sampling = completion_sampling(body, model.sampling_defaults)
    constraint = constraint_of(body)
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    prompts = prompt_tokens(model, body.prompt)
    try:  # choice p * n + j: prompt p, choice j
        gens = [gen for i, tokens in enumerate(prompts)
                for gen in model.fan_out(model.build_request(tokens, sampling, request_id=f"{completion_id}-{i}",
                                                             constraint=constraint), body.n)]
    except InvalidRequest as exc:  # build_request speaks of chat messages; here they are prompts
        if exc.param == "messages":
            exc.param = "prompt"
        raise
    echo = _echo(model, body, prompts) if body.echo else None
    streams = [generation_stream(request, model, gen) for gen in gens]
    logger.info("completion %s: %d prompt(s), %d prompt tokens, n=%d, stream=%s", completion_id, len(prompts),
                sum(len(p) for p in prompts), body.n, body.stream)
    if body.stream:
        firsts = await first_deltas(streams)  # admission and first tokens before the 200
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _events(completion_id, model.name, streams, firsts, include_usage, body.n, echo,
                         sampling.logprobs is not None)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        done = await until_disconnect(request, collect_choices(streams))
    except ClientGone:
        logger.info("client left before %s finished; generation aborted", completion_id)
        return Response(status_code=499)
    choices = []
    for i, c in enumerate(done):
        head = echo[i // body.n] if echo else None
        logprobs = None
        if sampling.logprobs is not None:
            logprobs = LegacyLogprobs()(list(c.prompt_logprobs or ()) + c.logprobs, head.first_piece if head else b"")
        choices.append(CompletionChoice(index=i, text=(head.text if head else "") + c.text, logprobs=logprobs,
                                        finish_reason=_reason(c.finish_reason)))
    return TextCompletion(id=completion_id, model=model.name, choices=choices,
                          usage=usage_info(total_usage([c.usage for c in done], body.n)))


@dataclass(frozen=True)
class _Echo:
    text: str  # the prompt as the client sent it (token prompts: detokenized)
    first_piece: bytes  # the first prompt token's text, which has no logprob


def _echo(model: AsyncChatModel, body: CompletionRequest, prompts: list[list[int]]) -> list[_Echo]:
    raw = [body.prompt] if isinstance(body.prompt, str) else body.prompt if isinstance(body.prompt[0], str) else None
    return [_Echo(raw[i] if raw else model.engine.detokenize(tokens), model.engine.detokenize(tokens[:1]).encode())
            for i, tokens in enumerate(prompts)]


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


def _reason(reason: FinishReason | None) -> str | None:
    return reason.value if reason is not None else None


async def _events(completion_id: str, model_name: str, streams: list[AsyncIterator[Delta]], firsts: list[Delta],
                  include_usage: bool, n: int, echo: list[_Echo] | None, with_logprobs: bool) -> AsyncIterator[str]:
    created = int(time.time())
    usages: list[Usage | None] = [None] * len(streams)
    legacy = [LegacyLogprobs() for _ in streams]  # text offsets run on across a choice's chunks

    def chunk(i: int, text: str, logprobs: CompletionLogprobs | None = None, finish: str | None = None) -> str:
        return sse(TextCompletion(id=completion_id, created=created, model=model_name,
                                  choices=[CompletionChoice(index=i, text=text, logprobs=logprobs, finish_reason=finish)]))

    merged = interleave(streams, firsts)
    try:
        for i in range(len(streams) if echo else 0):  # the prompt first, with its logprobs when asked
            head = echo[i // n]
            records = firsts[i].prompt_logprobs or ()
            yield chunk(i, head.text, legacy[i](records, head.first_piece) if with_logprobs else None)
        async for i, delta in merged:
            if delta.finish_reason is not None:
                usages[i] = delta.usage
            if delta.text or delta.finish_reason is not None or (with_logprobs and delta.logprobs):
                yield chunk(i, delta.text, legacy[i](delta.logprobs) if with_logprobs else None,
                            _reason(delta.finish_reason))
        if include_usage:
            yield sse(TextCompletion(id=completion_id, created=created, model=model_name, choices=[],
                                     usage=usage_info(total_usage(usages, n))))
    except Exception as exc:  # after the 200: report in-band, then end the stream properly
        yield error_event(exc, completion_id)
    finally:
        await merged.aclose()
    yield DONE
