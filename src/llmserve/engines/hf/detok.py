"""Incremental detokenization: text comes out only once it is final.

The window trick of TGI and vLLM: decode a few tokens of context plus the new ones, emit what
extends the context's text, and hold back text that ends in U+FFFD (an unfinished UTF-8
character split across byte tokens). Decoding with context also keeps word-piece spaces right.
"""

from __future__ import annotations

from collections.abc import Sequence

_CONTEXT = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt: Sequence[int]):
        self._tok = tokenizer
        self._ids = list(prompt[-_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def add(self, token: int) -> str:
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (the stream ended mid-character)."""
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        self._prefix = self._read = len(self._ids)
        return after[len(before):]
