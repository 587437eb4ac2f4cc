"""Wire models to engine dataclasses (and back)."""

from __future__ import annotations

from llmserve.errors import UnsupportedParameter
from llmserve.sampling_defaults import SamplingDefaults
from llmserve.server.protocol import ChatCompletionRequest, ChatMessage, SamplingFields, UsageInfo, PromptTokensDetails
from llmserve.types import Message, SamplingParams, Usage


def sampling_from(body: SamplingFields, defaults: SamplingDefaults, *, max_tokens: int | None = None) -> SamplingParams:
    """The request's sampling: what it sets, the model's ``defaults`` for what it leaves unset."""
    name = body.unsupported()
    if name is not None:
        raise UnsupportedParameter(f"{name} is not supported by this server yet", param=name)
    return defaults.resolve(dict(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        max_tokens=max_tokens if max_tokens is not None else body.max_tokens,
        stop=body.stop,
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        ignore_eos=body.ignore_eos,
    ))


def chat_sampling(body: ChatCompletionRequest, defaults: SamplingDefaults) -> SamplingParams:
    return sampling_from(body, defaults, max_tokens=body.max_completion_tokens or body.max_tokens)


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
