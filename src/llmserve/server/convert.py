"""Wire models to engine dataclasses (and back)."""

from __future__ import annotations

from dataclasses import replace

from llmserve.errors import UnsupportedParameter
from llmserve.server.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    PromptTokensDetails,
    SamplingFields,
    UsageInfo,
)
from llmserve.types import Message, SamplingParams, Usage


def sampling_from(body: SamplingFields, *, max_tokens: int | None = None) -> SamplingParams:
    name = body.unsupported()
    if name is not None:
        raise UnsupportedParameter(f"{name} is not supported by this server yet", param=name)
    stop = body.stop
    return SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=max(body.top_k, 0),
        min_p=body.min_p,
        max_tokens=max_tokens if max_tokens is not None else body.max_tokens,
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        ignore_eos=body.ignore_eos,
        logit_bias=tuple((int(k), float(v)) for k, v in (body.logit_bias or {}).items()),
    )


def chat_sampling(body: ChatCompletionRequest) -> SamplingParams:
    sampling = sampling_from(body, max_tokens=body.max_completion_tokens or body.max_tokens)
    if body.logprobs:
        sampling = replace(sampling, logprobs=body.top_logprobs or 0)
    return sampling


def completion_sampling(body: CompletionRequest) -> SamplingParams:
    """``logprobs: k`` for the generated tokens; with ``echo``, for the prompt's too."""
    sampling = sampling_from(body)
    if body.logprobs is not None:
        sampling = replace(sampling, logprobs=body.logprobs, prompt_logprobs=body.logprobs if body.echo else None)
    return sampling


def to_message(m: ChatMessage) -> Message:
    content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
    # "developer" is OpenAI's newer name for the system role
    return Message("system" if m.role == "developer" else m.role, content)


def usage_info(usage: Usage | None) -> UsageInfo:
    if usage is None:
        return UsageInfo()
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )
