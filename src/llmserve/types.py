"""Plain dataclasses spoken across the engine boundary.

Nothing here knows about HTTP or pydantic: the server translates its wire models into these,
and every engine consumes and produces only these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields


class FinishReason(str, enum.Enum):
    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens or the context window reached
    ABORT = "abort"  # cancelled (client gone, server shutting down)


@dataclass(frozen=True)
class ToolCall:
    """One function call an assistant made: ``arguments`` is the JSON text of the arguments."""

    id: str
    name: str
    arguments: str = "{}"


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant | tool
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns that called tools
    tool_call_id: str | None = None  # role "tool": the call this message answers
    name: str | None = None  # role "tool": the function's name, when the client sent it


@dataclass(frozen=True)
class Constraint:
    """Structured output: what the completion must match, valid by construction.

    ``kind``: ``json_schema`` (``spec`` is the schema's JSON text), ``json_object`` (any JSON
    object; ``spec`` empty), ``regex``, ``choice`` (``spec`` is a JSON list of strings) or
    ``grammar`` (a Lark grammar in llguidance's dialect, or GBNF). JSON is generated compact (no
    whitespace between tokens). The sequence finishes with ``stop`` as soon as the grammar is
    complete; ``max_tokens`` first gives ``length``.

    ``trigger`` makes the constraint lazy (tool calls under ``tool_choice: auto``): decoding is
    free (no mask, no grammar work) until the generated text contains ``trigger``; from then on
    the grammar must match the completion FROM THE FIRST CHARACTER OF THE TRIGGER to the end, so
    the grammar itself starts with the trigger, e.g. ``start: "<tool_call>" ...``. The trigger may
    span several tokens and end mid-token (the rest of that token is matched too); text the
    grammar cannot match there ends the sequence with an ``EngineError``.
    ``llmserve.structured`` compiles it; the engines enforce it (``Capabilities.constraints``
    lists the kinds, plus ``"trigger"`` where lazy constraints work). See
    docs/structured-output.md.
    """

    kind: str
    spec: str = ""
    trigger: str | None = None


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters with OpenAI/vLLM meanings. ``temperature == 0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    min_p: float = 0.0  # 0 disables
    max_tokens: int | None = None  # None: until the context window is full
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # 1 disables
    ignore_eos: bool = False  # generate past end-of-generation tokens, up to max_tokens (vLLM's)
    # per generated token, its log-probability and those of the ``logprobs`` likeliest tokens
    # (0: the chosen token's only); None: none reported. See ``TokenLogprob`` for what they are.
    logprobs: int | None = None
    prompt_logprobs: int | None = None  # the same for every prompt token but the first (``echo``)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, -100..100) added to its logit

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class RequestTiming:
    """Filled in by the engine as a request moves (``time.monotonic()`` seconds); read by metrics.

    ``started_at``: when the request left the queue and its prefill began. Engines that cannot
    tell leave it None (queue time is then not reported).
    """

    started_at: float | None = None


ALL_SAMPLING: frozenset[str] = frozenset(f.name for f in fields(SamplingParams))


PRIORITY_LIVE = 0  # an interactive request
PRIORITY_BATCH = 1  # a batch line: runs only on what live traffic leaves (see GenerationRequest.priority)


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. ``prompt_tokens`` are already rendered and tokenized.

    ``priority``: lower runs first. Above ``PRIORITY_LIVE`` a request is background work: it takes
    only free slots, and an engine that can pauses it when a live request would otherwise wait."""

    request_id: str
    prompt_tokens: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    constraint: Constraint | None = None
    adapter: str | None = None  # the LoRA adapter to generate under (its served name); None: the base model
    priority: int = PRIORITY_LIVE
    # the n requests of one ``n > 1`` call share the group (their ids are ``{group}-{i}``) and the
    # prompt, and arrive together: an engine may prefill that prompt once for all of them
    group: str | None = None
    timing: RequestTiming = field(default_factory=RequestTiming, compare=False, repr=False)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the KV cache (prefix reuse)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability under the distribution it was drawn from: the model's logits
    after structured-output masks and ``logit_bias``, before penalties and temperature (what vLLM
    reports). A token that distribution forbids has ``FORBIDDEN_LOGPROB``. ``top``: the likeliest
    tokens of that step, most likely first (their own ``top`` is empty)."""

    token_id: int
    piece: bytes  # the token's bytes (a piece of a UTF-8 character for some tokens)
    logprob: float
    top: tuple[TokenLogprob, ...] = ()


FORBIDDEN_LOGPROB = -9999.0


@dataclass(frozen=True)
class Delta:
    """One streamed step: new text (may be empty), and on the last step the finish reason and usage.

    ``logprobs``: with ``SamplingParams.logprobs``, one record per generated token of this step
    (none for an end-of-generation token, which has no text). ``prompt_logprobs``: on the first
    delta, with ``SamplingParams.prompt_logprobs``, one per prompt token (None for the first)."""

    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


@dataclass(frozen=True)
class Completion:
    """A whole answer, as returned by ``ChatModel.chat``."""

    text: str
    finish_reason: FinishReason
    usage: Usage


@dataclass(frozen=True)
class Capabilities:
    """What an engine honours; the server rejects anything else with 400 naming the parameter."""

    sampling: frozenset[str]
    max_context: int  # longest prompt + completion one request may use
    chat_template: bool = True
    vocab_size: int = 0  # token ids are 0..vocab_size-1 (0: unknown, ids are not checked)
    # texts the tokenizer reads as control tokens when it parses special tokens ("<|im_end|>"):
    # chat content that contains one is tokenized as plain text (llmserve.content_text)
    special_tokens: frozenset[str] = frozenset()
    # the most characters one token can stand for: a text of N characters is at least
    # N / max_token_chars tokens, so what cannot fit the context is refused before tokenizing
    max_token_chars: int | None = None
    tool_format: str | None = None  # how the chat template shows tools and calls (structured/tools); None: no tools
    # structured output: the Constraint kinds honoured, and "trigger" when lazy constraints are
    constraints: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EngineStats:
    loaded: bool
    running: int = 0  # sequences being prefilled or decoded
    waiting: int = 0  # admitted but not yet scheduled
    # time.monotonic() of the engine's last progress (a step finished, or work came to an idle
    # engine); None: the engine does not tell. Busy and stale for long: the engine is stalled.
    last_progress: float | None = None


@dataclass(frozen=True)
class Embeddings:
    """One vector per input (unit length unless the embedder says otherwise), and the tokens read."""

    vectors: list[list[float]]
    prompt_tokens: int
