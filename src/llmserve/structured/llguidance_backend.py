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
    def accepting(self) -> bool:
        return self.m.is_accepting()

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
        return cls(_llamacpp_tokenizer(vocab, n_vocab, list(eog)))

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


def _llamacpp_tokenizer(vocab: Any, n_vocab: int, eog: list[int]) -> llg.LLTokenizer:
    """``llguidance.llamacpp.lltokenizer_from_vocab``, on llama.cpp's current attribute call (the
    deprecated one it uses warns once per token). Control tokens, and user-defined ones written
    like ``<...>``, are marked special with a leading 0xFF as llguidance expects."""
    import ctypes

    import llama_cpp as ll

    buf = ctypes.create_string_buffer(16 * 1024)
    tokens: list[bytes] = []
    for token in range(ll.llama_vocab_n_tokens(vocab)):
        n = ll.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
        if n < 0:
            raise ValueError(f"token {token} does not fit a {len(buf)}-byte buffer")
        piece = buf.raw[:n]
        attr = ll.llama_vocab_get_attr(vocab, token)
        if attr & ll.LLAMA_TOKEN_ATTR_CONTROL or (
                attr & ll.LLAMA_TOKEN_ATTR_USER_DEFINED and piece.startswith(b"<") and piece.endswith(b">")):
            piece = b"\xff" + piece
        tokens.append(piece)
    tokens += [b""] * (n_vocab - len(tokens))
    tokenize = ctypes.cast(ll.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return llg.LLTokenizer.from_llamacpp(tokens=tokens, vocab_ptr=vocab, tokenize_fptr=tokenize, eos_token=eog,
                                         slices=None)
