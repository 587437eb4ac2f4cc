"""Wire models to engine dataclasses (and back)."""

from __future__ import annotations

from dataclasses import replace

from llmserve.errors import InvalidRequest, UnsupportedParameter
from llmserve.sampling_defaults import SamplingDefaults
from llmserve.server.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DeltaFunction,
    DeltaMessage,
    DeltaToolCall,
    PromptTokensDetails,
    SamplingFields,
    TextPart,
    ToolCallFunction,
    ToolCallOut,
    UsageInfo,
)
from llmserve.structured.request import constraint_from
from llmserve.structured.tools import Arguments, CallStart, Content, Event, ToolPlan, ToolRequest, tool_request
from llmserve.types import Constraint, Message, SamplingParams, ToolCall, Usage


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
        logit_bias=tuple((int(k), float(v)) for k, v in (body.logit_bias or {}).items()),
    ))


def constraint_of(body: SamplingFields) -> Constraint | None:
    """The request's structured-output constraint (``response_format``, vLLM's fields)."""
    fmt = body.response_format.model_dump(by_alias=True) if body.response_format is not None else None
    return constraint_from(response_format=fmt, structured_outputs=body.structured_outputs,
                           guided_json=body.guided_json, guided_regex=body.guided_regex,
                           guided_choice=body.guided_choice, guided_grammar=body.guided_grammar)


def chat_sampling(body: ChatCompletionRequest, defaults: SamplingDefaults) -> SamplingParams:
    sampling = sampling_from(body, defaults, max_tokens=body.max_completion_tokens or body.max_tokens)
    if body.logprobs:
        sampling = replace(sampling, logprobs=body.top_logprobs or 0)
    return sampling


def completion_sampling(body: CompletionRequest, defaults: SamplingDefaults) -> SamplingParams:
    """``logprobs: k`` for the generated tokens; with ``echo``, for the prompt's too."""
    sampling = sampling_from(body, defaults)
    if body.logprobs is not None:
        sampling = replace(sampling, logprobs=body.logprobs, prompt_logprobs=body.logprobs if body.echo else None)
    return sampling


def to_message(m: ChatMessage) -> Message:
    parts = m.content if isinstance(m.content, list) else []
    if any(not isinstance(p, TextPart) for p in parts):
        raise UnsupportedParameter("only text content parts are supported", param="messages")
    content = m.content if isinstance(m.content, str) else "".join(p.text for p in parts)
    calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ())
    # "developer" is OpenAI's newer name for the system role
    return Message("system" if m.role == "developer" else m.role, content, calls, m.tool_call_id, m.name)


def chat_tools(body: ChatCompletionRequest) -> ToolRequest | None:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` as plain data (None: no tools)."""
    choice = body.tool_choice
    return tool_request(
        [t.model_dump() for t in body.tools or ()],
        choice.model_dump() if choice is not None and not isinstance(choice, str) else choice,
        body.parallel_tool_calls,
    )


def tool_or_format_constraint(plan: ToolPlan | None, response_format: Constraint | None) -> Constraint | None:
    """One constraint per request: the tool calls' or ``response_format``'s, not both."""
    if plan is None:
        return response_format
    if response_format is not None:
        raise InvalidRequest("response_format cannot be combined with tool calls; send tool_choice 'none' "
                             "or leave response_format out", param="response_format")
    return plan.constraint


def tool_calls_out(calls: list[ToolCall]) -> list[ToolCallOut] | None:
    return [ToolCallOut(id=c.id, function=ToolCallFunction(name=c.name, arguments=c.arguments)) for c in calls] or None


def tool_delta(event: Event) -> DeltaMessage:
    """One parser event as a streamed delta (OpenAI's shapes)."""
    if isinstance(event, Content):
        return DeltaMessage(content=event.text)
    if isinstance(event, CallStart):
        call = DeltaToolCall(index=event.index, id=event.id, type="function",
                             function=DeltaFunction(name=event.name, arguments=""))
    else:
        assert isinstance(event, Arguments)
        call = DeltaToolCall(index=event.index, function=DeltaFunction(arguments=event.text))
    return DeltaMessage(tool_calls=[call])


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
