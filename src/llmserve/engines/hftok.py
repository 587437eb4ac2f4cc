"""A Hugging Face tokenizer with special-token parsing on or off (the HF and vLLM engines)."""

from __future__ import annotations

import threading


class HFTokenizing:
    """``encode`` with ``parse_special``; the special-token texts and the longest token, once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # transformers switches special-token splitting by setting a flag on the shared Rust
        # tokenizer before each encode: two threads in different modes must take turns
        self._lock = threading.Lock()
        specials = set(getattr(tokenizer, "all_special_tokens", ()))
        for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
            if getattr(added, "special", False):
                specials.add(added.content)
        self.special_tokens = frozenset(s for s in specials if s)
        try:  # a token's string has at least as many characters as the text it stands for
            self.max_token_chars: int | None = max(len(t) for t in tokenizer.get_vocab()) or None
        except (AttributeError, TypeError, ValueError):
            self.max_token_chars = None

    def encode(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        with self._lock:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special,
                                              split_special_tokens=not parse_special))
