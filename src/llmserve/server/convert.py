"""Wire models to engine dataclasses (and back)."""

from __future__ import annotations

from llmserve.errors import UnsupportedParameter
from llmserve.server.protocol import ChatCompletionRequest, ChatMessage, SamplingFields, UsageInfo, PromptTokensDetails
from llmserve.structured.request import constraint_from
from llmserve.types import Constraint, Message, SamplingParams, Usage


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
    )


def constraint_of(body: SamplingFields) -> Constraint | None:
    """The request's structured-output constraint (``response_format``, vLLM's fields)."""
    fmt = body.response_format.model_dump(by_alias=True) if body.response_format is not None else None
    return constraint_from(response_format=fmt, structured_outputs=body.structured_outputs,
                           guided_json=body.guided_json, guided_regex=body.guided_regex,
                           guided_choice=body.guided_choice, guided_grammar=body.guided_grammar)


def chat_sampling(body: ChatCompletionRequest) -> SamplingParams:
    return sampling_from(body, max_tokens=body.max_completion_tokens or body.max_tokens)


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
