"""Logprob records (``types.TokenLogprob``) in OpenAI's two wire shapes: chat's
``logprobs.content[]`` and the legacy completions object (``tokens``, ``token_logprobs``,
``top_logprobs``, ``text_offset``)."""

from __future__ import annotations

from collections.abc import Sequence

from llmserve.server.protocol import ChoiceLogprobs, CompletionLogprobs, TokenLogprobInfo, TopLogprob
from llmserve.types import TokenLogprob


def token_text(piece: bytes) -> str:
    """A token's text; a token that is part of a UTF-8 character shows replacement characters
    (its ``bytes`` are exact)."""
    return piece.decode("utf-8", "replace")


def chat_logprobs(records: Sequence[TokenLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(content=[
        TokenLogprobInfo(
            token=token_text(r.piece), logprob=r.logprob, bytes=list(r.piece),
            top_logprobs=[TopLogprob(token=token_text(t.piece), logprob=t.logprob, bytes=list(t.piece)) for t in r.top],
        )
        for r in records
    ])


class LegacyLogprobs:
    """Builds the legacy shape of one choice, chunk by chunk: ``text_offset`` runs on across
    calls, from ``offset`` (where the choice's text starts in the answer's)."""

    def __init__(self, offset: int = 0):
        self.offset = offset

    def __call__(self, records: Sequence[TokenLogprob | None], first_piece: bytes = b"") -> CompletionLogprobs:
        """``records``; a None record (the first prompt token) has its text in ``first_piece``."""
        out = CompletionLogprobs()
        for r in records:
            text = token_text(r.piece if r is not None else first_piece)
            out.tokens.append(text)
            out.text_offset.append(self.offset)
            self.offset += len(text)
            if r is None:
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
                continue
            out.token_logprobs.append(r.logprob)
            top = {token_text(t.piece): t.logprob for t in r.top}
            top.setdefault(text, r.logprob)  # as vLLM does: the sampled token is always among them
            out.top_logprobs.append(top)
        return out
