"""Wire models to engine dataclasses (and back)."""

from __future__ import annotations

from llmserve.errors import UnsupportedParameter
from llmserve.sampling_defaults import SamplingDefaults
from llmserve.server.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    PromptTokensDetails,
    SamplingFields,
    TextPart,
    UsageInfo,
)
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
    parts = m.content if isinstance(m.content, list) else []
    if any(not isinstance(p, TextPart) for p in parts):
        raise UnsupportedParameter("only text content parts are supported", param="messages")
    content = m.content if isinstance(m.content, str) else "".join(p.text for p in parts)
    # "developer" is OpenAI's newer name for the system role
    return Message("system" if m.role == "developer" else m.role, content)


PART_KINDS = {"image_url": "image", "input_audio": "audio", "file": "file"}


def to_messages(messages: list[ChatMessage], model_name: str) -> list[Message]:
    """``to_message`` of each, refusing with a 400 that names it a content part the model cannot
    take ("messages[0].content[1]: image input is not supported by model 'm'")."""
    for i, m in enumerate(messages):
        for j, part in enumerate(m.content if isinstance(m.content, list) else ()):
            if not isinstance(part, TextPart):
                where = f"messages[{i}].content[{j}]"
                raise UnsupportedParameter(
                    f"{where}: {PART_KINDS.get(part.type, part.type)} input is not supported by model {model_name!r}",
                    param=where)
    return [to_message(m) for m in messages]


def usage_info(usage: Usage | None) -> UsageInfo:
    if usage is None:
        return UsageInfo()
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )
