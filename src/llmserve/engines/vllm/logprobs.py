"""vLLM's logprobs (``{token id: Logprob(logprob, rank, decoded_token)}`` per position) as
llmserve's ``TokenLogprob`` records. No vLLM import: the objects are read by their attributes."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from llmserve.types import FORBIDDEN_LOGPROB, TokenLogprob


def _value(x: float) -> float:
    return x if math.isfinite(x) else FORBIDDEN_LOGPROB


def record(token: int, position: Mapping[int, Any], k: int, piece: Callable[[int], bytes]) -> TokenLogprob:
    """The chosen ``token``'s record from one position's dict, with its ``k`` likeliest tokens
    (vLLM adds the chosen token to the top k when it is not among them)."""
    top = sorted(position.items(), key=lambda item: -item[1].logprob)[:k]
    return TokenLogprob(token, piece(token), _value(position[token].logprob),
                        tuple(TokenLogprob(t, piece(t), _value(lp.logprob)) for t, lp in top))


def records(tokens: Iterable[int], positions: Iterable[Mapping[int, Any] | None], k: int,
            piece: Callable[[int], bytes]) -> list[TokenLogprob | None]:
    return [None if pos is None else record(t, pos, k, piece) for t, pos in zip(tokens, positions)]
