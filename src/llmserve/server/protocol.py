"""OpenAI wire models (pydantic). Nothing but the shapes and their bounds lives here."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _now() -> int:
    return int(time.time())


class Strict(BaseModel):
    """Unknown fields are rejected (400 naming them), as OpenAI itself does. An explicit ``null``
    for a field that has a non-null default means that default, as in OpenAI's API."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            fields = cls.model_fields
            return {k: v for k, v in data.items()
                    if not (v is None and k in fields and fields[k].default is not None and fields[k].is_required() is False)}
        return data


# -- requests -------------------------------------------------------------------------------------
class TextPart(Strict):
    type: Literal["text"]
    text: str


# Parts OpenAI defines that no engine here takes yet: accepted by the schema so that the answer is
# a 400 naming the part and the model (server/convert.py), not a schema mismatch.
class ImageURLPart(BaseModel):
    type: Literal["image_url"]
    image_url: dict[str, Any] | str


class InputAudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class FilePart(BaseModel):
    type: Literal["file"]
    file: dict[str, Any]


ContentPart = Annotated[TextPart | ImageURLPart | InputAudioPart | FilePart, Field(discriminator="type")]
_CONTENT_PARTS: TypeAdapter[list[ContentPart]] = TypeAdapter(list[ContentPart])


class FunctionCall(Strict):
    name: str
    arguments: str = "{}"  # JSON text, as OpenAI sends it


class ToolCallItem(Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None  # null only for an assistant turn that called tools
    name: str | None = None
    tool_calls: list[ToolCallItem] | None = None  # assistant turns
    tool_call_id: str | None = None  # role "tool": the call this result answers

    @model_validator(mode="after")
    def _tool_turns(self):
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls are only allowed on assistant messages")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null only on an assistant message with tool_calls)")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    @field_validator("content", mode="before")
    @classmethod
    def _content_shape(cls, value: Any) -> Any:
        """One clear error for a bad content (a string, or a list of typed parts), not one per union member."""
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("must be a string or an array of content parts")
        try:
            return _CONTENT_PARTS.validate_python(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = list(first["loc"])
            index = loc.pop(0) if loc and isinstance(loc[0], int) else None
            if loc and loc[0] in ("text", "image_url", "input_audio", "file") and len(loc) > 1:
                loc.pop(0)  # the discriminator's tag
            where = f"[{index}]" if index is not None else ""
            if first["type"] == "union_tag_invalid":
                kind = value[index].get("type") if index is not None and isinstance(value[index], dict) else None
                raise ValueError(f"{where} unknown content part type {kind!r}; expected text, image_url, "
                                 "input_audio or file") from None
            if first["type"] == "union_tag_not_found":
                raise ValueError(f"{where} a content part needs a 'type'") from None
            field = ".".join(str(p) for p in loc)
            raise ValueError(f"{where}{'.' + field if field else ''} {first['msg']}") from None


FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionDef(Strict):
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON Schema of the arguments; absent: none
    strict: bool | None = None  # arguments always follow the schema here (decoding is constrained)


class ToolDef(Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class JsonSchemaFormat(Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="the JSON Schema the reply must match")
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


# Parameters the OpenAI API defines that no engine honours yet: accepted only at their default,
# anything else is a 400 that names the parameter (never silently ignored).
UNSUPPORTED_UNLESS_DEFAULT: dict[str, Any] = {
    "functions": None,
    "function_call": None,
    "audio": None,
    "modalities": None,
    "prediction": None,
    "reasoning_effort": None,
    "web_search_options": None,
    "store": False,
    "best_of": None,
    "suffix": None,
}


class SamplingFields(Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    # sampling: unset (absent or null) takes the model's default (sampling_defaults.py, GET /v1/models)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy; unset: the model's default")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="unset: the model's default")
    top_k: int | None = Field(None, ge=-1, description="extension: 0 or -1 disables; unset: the model's default")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="extension; unset: the model's default")
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="unset: the model's default")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0, description="unset: the model's default")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, description="extension; unset: the model's default")
    ignore_eos: bool = Field(False, description="extension (vLLM, llama-server): generate up to max_tokens")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    n: int = Field(1, ge=1, le=128, description="choices to generate (each its own sequence; seed + i for choice i)")
    logit_bias: dict[str, float] | None = Field(
        None, description="token id -> bias in -100..100 added to its logit (-100 bans, 100 forces)")
    # known but not honoured yet
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    # vLLM's structured-output extensions: one of json, regex, choice, grammar, json_object
    structured_outputs: dict[str, Any] | None = Field(None, description="extension (vLLM): json | regex | choice | grammar")
    guided_json: dict[str, Any] | str | None = Field(None, description="extension (vLLM, older name)")
    guided_regex: str | None = Field(None, description="extension (vLLM, older name)")
    guided_choice: list[str] | None = Field(None, description="extension (vLLM, older name)")
    guided_grammar: str | None = Field(None, description="extension (vLLM, older name)")
    audio: dict[str, Any] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    web_search_options: dict[str, Any] | None = None
    store: bool | None = False
    service_tier: str | None = None

    @model_validator(mode="after")
    def _checks(self):
        if isinstance(self.stop, list) and len(self.stop) > 16:
            raise ValueError("stop takes at most 16 sequences")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"{key!r} is not a token id")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"the bias of token {key} must be between -100 and 100")
        return value

    def unsupported(self) -> str | None:
        """The first known-but-unsupported parameter set to a non-default value."""
        for name, default in UNSUPPORTED_UNLESS_DEFAULT.items():
            value = getattr(self, name, default)
            if name == "response_format" and value is not None:
                value = value.type
            if value in (None, [], {}, False) or value == default:
                continue
            return name
        return None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolDef] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool = Field(False, description="return the log-probability of each output token")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="with logprobs: the likeliest tokens at each position")

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("logprobs must be true when top_logprobs is set")
        return value


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1, description="16 when absent, as OpenAI's and vLLM's legacy "
                                   "completions; null: up to the end of the context")
    logprobs: int | None = Field(None, ge=0, le=20, description="log-probabilities of the output tokens and of "
                                 "this many likeliest tokens at each position")
    echo: bool = Field(False, description="the prompt before the completion (with logprobs: the prompt's too)")
    best_of: int | None = None
    suffix: str | None = None


# -- responses ------------------------------------------------------------------------------------
class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class _OptionalToolCalls(BaseModel):
    """``tool_calls`` is left out of the JSON when there are none (as OpenAI does)."""

    @model_serializer(mode="wrap")
    def _without_null_tool_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("tool_calls", 0) is None:
            del data["tool_calls"]
        return data


class ToolCallFunction(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class AssistantMessage(_OptionalToolCalls):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None  # left out when there are none


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobInfo(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobInfo] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class DeltaFunction(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """First delta of a call: index, id, type, function.name (arguments ""); then arguments pieces."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction

    @model_serializer(mode="wrap")
    def _no_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        data["function"] = {k: v for k, v in data["function"].items() if v is not None}
        return {k: v for k, v in data.items() if v is not None}


class DeltaMessage(_OptionalToolCalls):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None  # left out when there are none


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=_now)
    owned_by: str = "llmserve"
    parent: str | None = Field(None, description="a LoRA adapter's base model (vLLM's field); null for a base model")
    engine: str
    max_model_len: int
    capabilities: dict[str, Any] = Field(default_factory=dict)
    sampling_defaults: dict[str, Any] = Field(
        default_factory=dict, description="what a request's unset sampling parameters become for this model")
    sampling_defaults_source: dict[str, str] = Field(
        default_factory=dict, description="where each default comes from: settings, model (its own files) or llmserve")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- operations: completions, embeddings, tokenize (vLLM's shapes) -----------------------------------
class CompletionLogprobs(BaseModel):
    """The legacy shape: per token its text, logprob, likeliest alternatives and text offset."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class TextCompletion(BaseModel):
    """Both the /v1/completions answer and each of its stream chunks (OpenAI uses one object)."""

    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None


class EmbeddingRequest(Strict):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64 of little-endian float32 when encoding_format is base64


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class TokenizePromptRequest(Strict):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(Strict):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool = False  # the chat template writes the special tokens itself
    return_token_strs: bool = False


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None
    content_special_tokens: Literal["text", "control"] = Field(
        "control", description="How special-token strings the client wrote (e.g. '<|im_end|>') were "
        "tokenized: 'text' (chat messages, the default: content cannot forge turns) or 'control' "
        "(a raw prompt, or chat with --allow-special-tokens-in-content).")


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


# -- LoRA adapters at run time (vLLM's shapes) ------------------------------------------------------
class LoadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1, max_length=256, description="the model name requests will use")
    lora_path: str = Field(min_length=1, max_length=4096, description="a PEFT adapter directory on the server, or a GGUF LoRA (llama.cpp)")
    base_model_name: str | None = Field(None, description="the served model it adapts (default: the first)")


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1, max_length=256)
    lora_int_id: int | None = Field(None, description="accepted for vLLM clients; unused")
