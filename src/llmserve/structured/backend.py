"""The grammar-backend protocol: compile a constraint once, then one matcher per sequence.

Shaped after vLLM's ``v1/structured_output/backend_types.py``. A backend is built for one
vocabulary; bitmasks are int32 rows of ``ceil(vocab_size / 32)`` words, bit ``t % 32`` of word
``t // 32`` set when token ``t`` is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from llmserve.types import Constraint


class GrammarError(ValueError):
    """The constraint cannot be compiled; ``str()`` is the compiler's reason."""


class Matcher(Protocol):
    """One sequence's position in its grammar."""

    def consume(self, tokens: Sequence[int]) -> bool:
        """Advance over ``tokens``; False (and ``error`` set) when the grammar rejects one."""

    @property
    def done(self) -> bool:
        """The grammar is complete and allows no further token."""

    @property
    def accepting(self) -> bool:
        """The text so far is a complete match (the grammar may still allow more)."""

    @property
    def error(self) -> str:
        """Why the matcher broke; empty while it is fine."""


class Grammar(Protocol):
    """A compiled constraint: cheap to start many matchers from."""

    def matcher(self) -> Matcher: ...


class GrammarBackend(Protocol):
    vocab_size: int

    def compile(self, constraint: Constraint) -> Grammar:
        """Blocking (run it off the event loop); raises ``GrammarError``."""

    def tokenize(self, data: bytes) -> list[int]:
        """Some token ids that spell ``data`` (to feed a matcher text it did not see as tokens)."""

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` spells."""

    def fill_bitmasks(self, rows: Sequence[tuple[Matcher, int]], bitmask: np.ndarray) -> None:
        """Writes each matcher's allowed tokens into its row of ``bitmask`` (int32, C-contiguous);
        may release the GIL."""
