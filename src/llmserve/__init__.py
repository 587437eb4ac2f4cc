"""llmserve: an OpenAI-compatible chat server and in-process API over pluggable engines."""

from __future__ import annotations

__version__ = "0.1.0"

from llmserve.chat_model import AsyncChatModel, ChatModel  # noqa: E402
from llmserve.errors import (  # noqa: E402
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    LLMServeError,
    ModelNotFound,
    Overloaded,
    RateLimited,
    Unauthorized,
)
from llmserve.settings import ModelSettings, Settings  # noqa: E402
from llmserve.types import Completion, Message, SamplingParams, Usage  # noqa: E402

Response = Completion

__all__ = [
    "AsyncChatModel", "ChatModel", "Completion", "ContextLengthExceeded", "EngineError", "InvalidRequest",
    "LLMServeError", "Message", "ModelNotFound", "ModelSettings", "Overloaded", "RateLimited", "Response",
    "SamplingParams", "Settings", "Unauthorized", "Usage", "__version__",
]
