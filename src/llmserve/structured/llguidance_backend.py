"""The llguidance backend (MIT, one dependency-free wheel), over a llama.cpp vocabulary or a
Hugging Face tokenizer.

JSON is compiled without flexible whitespace: separators are exactly ``,`` and ``:`` and no
whitespace is allowed between tokens, so a small model cannot run on with newlines up to
``max_tokens``. Strings inside the JSON are free text as the schema says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import llguidance as llg
import numpy as np
from llguidance.numpy import fill_next_token_bitmask_par

from llmserve.structured.backend import GrammarError
from llmserve.types import Constraint

JSON_OPTIONS = {"whitespace_flexible": False}
ANY_OBJECT = '{"type":"object"}'


def grammar_text(constraint: Constraint) -> str:
    """The llguidance grammar for ``constraint`` (not yet checked)."""
    kind, spec = constraint.kind, constraint.spec
    try:
        if kind == "json_schema":
            return llg.LLMatcher.grammar_from_json_schema(spec, defaults=JSON_OPTIONS)
        if kind == "json_object":
            return llg.LLMatcher.grammar_from_json_schema(ANY_OBJECT, defaults=JSON_OPTIONS)
        if kind == "regex":
            return llg.grammar_from("regex", spec)
        if kind == "choice":
            return llg.grammar_from("choice", spec)
        if kind == "grammar":
            return llg.grammar_from("grammar", spec)  # Lark (llguidance's dialect) or GBNF
    except (ValueError, TypeError) as exc:
        raise GrammarError(str(exc)) from None
    raise GrammarError(f"unknown constraint kind {kind!r}")


class LLGuidanceMatcher:
    __slots__ = ("m",)

    def __init__(self, m: llg.LLMatcher):
        self.m = m

    def consume(self, tokens: Sequence[int]) -> bool:
        return self.m.consume_tokens(list(tokens))

    @property
    def done(self) -> bool:
        return self.m.is_stopped()

    @property
    def error(self) -> str:
        return self.m.get_error()


class LLGuidanceGrammar:
    """A matcher in its initial state; each sequence gets a deep copy (shares the compiled parts)."""

    def __init__(self, template: llg.LLMatcher):
        self._template = template

    def matcher(self) -> LLGuidanceMatcher:
        return LLGuidanceMatcher(self._template.deep_copy())


class LLGuidanceBackend:
    def __init__(self, tokenizer: llg.LLTokenizer, *, n_threads: int = 1):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self._executor = llg.LLExecutor(n_threads)

    @classmethod
    def from_llamacpp(cls, vocab: Any, *, eog: Sequence[int], n_vocab: int) -> LLGuidanceBackend:
        """``eog``: EVERY end-of-generation id (the grammar allows them where it may end)."""
        from llguidance.llamacpp import lltokenizer_from_vocab

        return cls(lltokenizer_from_vocab(vocab, n_vocab=n_vocab, eos_token=list(eog)))

    @classmethod
    def from_hf(cls, tokenizer: Any, *, eog: Sequence[int], n_vocab: int) -> LLGuidanceBackend:
        from llguidance.hf import from_tokenizer

        return cls(from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=list(eog)))

    def compile(self, constraint: Constraint) -> LLGuidanceGrammar:
        text = grammar_text(constraint)
        template = llg.LLMatcher(self.tokenizer, text, log_level=0)  # releases the GIL while it builds
        if template.is_error():
            raise GrammarError(template.get_error())
        return LLGuidanceGrammar(template)

    def tokenize(self, data: bytes) -> list[int]:
        return self.tokenizer.tokenize_bytes(data)

    def piece(self, token: int) -> bytes:
        return self.tokenizer.decode_bytes([token])

    def fill_bitmasks(self, rows: Sequence[tuple[LLGuidanceMatcher, int]], bitmask: np.ndarray) -> None:
        fill_next_token_bitmask_par(self._executor, [(m.m, row) for m, row in rows], bitmask)
