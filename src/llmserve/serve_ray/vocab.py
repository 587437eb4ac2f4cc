"""The ingress's own tokenizer and chat template: routes tokenize and render before a request
reaches a replica, exactly as the replica's engine would (no weights are loaded here).

llama.cpp models load their vocabulary only (``vocab_only``); transformers and vLLM models load
the Hugging Face tokenizer of the same files. The fake engine's vocabulary grows as it tokenizes,
so no second copy of it could agree with a replica's: it cannot be served through Ray.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from llmserve.chat_template import ChatTemplate
from llmserve.errors import EngineError, InvalidRequest, ModelNotFound
from llmserve.settings import ModelSettings
from llmserve.types import Message

logger = logging.getLogger(__name__)


Tools = Sequence[dict[str, Any]] | None


class Vocabulary(Protocol):
    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]: ...

    def detokenize(self, token_ids: Sequence[int]) -> str: ...

    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    tools: Tools = None) -> str: ...

    def close(self) -> None: ...


def check_supported(settings: ModelSettings) -> None:
    """Raises ValueError (a clear CLI error) for models the ingress cannot tokenize for."""
    if settings.engine == "fake":
        raise ValueError(f"model {settings.served_name()!r}: the fake engine cannot be served with --ray "
                         "(its vocabulary is built per process); use llamacpp, hf or vllm")
    if settings.options.get("embedding"):
        raise ValueError(f"model {settings.served_name()!r}: embedding-only models are not served with --ray")


def load_vocabulary(settings: ModelSettings) -> Vocabulary:
    """Blocking (reads the model files): call it off the event loop."""
    check_supported(settings)
    if settings.engine == "llamacpp":
        return LlamaVocabulary(settings)
    return HFVocabulary(settings)


def _template_source(settings: ModelSettings, own: str | None, where: str) -> str:
    source = Path(settings.chat_template).read_text() if settings.chat_template else own
    if not source:
        raise EngineError(f"{where} has no chat template in its metadata; pass --chat-template FILE")
    return source


class LlamaVocabulary:
    def __init__(self, settings: ModelSettings):
        from llmserve.engines.llamacpp.model import LlamaModel

        path = settings.resolved_path()
        self.model = LlamaModel(path, vocab_only=True)
        source = _template_source(settings, self.model.chat_template(), path)
        self.template = ChatTemplate(source, bos_token=self.model.token_text(self.model.bos),
                                     eos_token=self.model.token_text(self.model.eos))

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self.model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        bad = [t for t in token_ids if not 0 <= t < self.model.n_vocab]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is not in the vocabulary", param="tokens")
        return self.model.detokenize(token_ids, special=True)

    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    tools: Tools = None) -> str:
        return self.template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    def close(self) -> None:
        self.model.close()


class HFVocabulary:
    def __init__(self, settings: ModelSettings):
        from transformers import AutoTokenizer

        from llmserve.engines.hftok import HFTokenizing

        path = Path(settings.resolved_path())
        if path.is_file() and path.suffix == ".gguf":
            where, kwargs = path.parent, {"gguf_file": path.name}
        elif path.is_dir():
            where, kwargs = path, {}
        else:
            raise ModelNotFound(f"not a GGUF file or a Hugging Face model directory: {path}")
        self.tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        self.tokens = HFTokenizing(self.tokenizer)  # as the HF and vLLM engines tokenize
        source = _template_source(settings, getattr(self.tokenizer, "chat_template", None), str(path))
        self.template = ChatTemplate(source, bos_token=self.tokenizer.bos_token or "",
                                     eos_token=self.tokenizer.eos_token or "")

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self.tokens.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def render_chat(self, messages: Sequence[Message], *, add_generation_prompt: bool = True,
                    tools: Tools = None) -> str:
        return self.template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    def close(self) -> None:
        pass
