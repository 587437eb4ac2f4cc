"""Log-probabilities of sampled (and prompt) tokens, from llama.cpp's logits rows, in numpy.

A row is read where the sampler read it: after structured-output masks and ``logit_bias`` were
applied in place, before penalties and temperature (which the sampler applies to its own copy),
so the figures are those of the distribution the token was drawn from, as vLLM reports them.
Only the sequences that asked pay for it: one ``exp`` pass over the vocabulary per row, plus a
partial sort when top alternatives are wanted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmserve.types import FORBIDDEN_LOGPROB, TokenLogprob

MAX_TOP = 20  # OpenAI's bound on top_logprobs
WINDOWS = (10.0, 30.0)  # logits below the maximum where top_tokens looks first


def logsumexp(row: np.ndarray, buf: np.ndarray, top: float | None = None) -> float:
    """``log(sum(exp(row)))`` of a float32 row, in float64; ``buf`` is a scratch row of the same
    length it overwrites; ``top`` is the row's maximum when the caller has it. A row that is all
    ``-inf`` gives ``-inf``."""
    top = float(row.max()) if top is None else top
    if not np.isfinite(top):
        return top
    np.subtract(row, np.float32(top), out=buf)
    np.exp(buf, out=buf)
    return top + float(np.log(buf.sum(dtype=np.float64)))


def top_tokens(row: np.ndarray, k: int, top: float | None = None) -> np.ndarray:
    """The ``k`` largest entries' indices, largest first (ties: lower id first); ``top`` is the
    row's maximum when the caller has it.

    A full partition of a 49k row costs ~1 ms, a comparison pass a few µs: the top k almost
    always lie within a few logits of the maximum, so only those candidates are partitioned;
    the window widens (at last to the whole row) while it holds fewer than k."""
    n = row.shape[0]
    if k <= 0:
        return np.empty(0, np.int64)
    k = min(k, n)
    top = float(row.max()) if top is None else top
    for window in WINDOWS:
        candidates = np.flatnonzero(row >= top - window)
        if len(candidates) >= k:
            break
    else:
        candidates = np.arange(n)
    values = row[candidates]
    if len(candidates) > k:
        keep = np.argpartition(values, len(candidates) - k)[len(candidates) - k:]
        candidates, values = candidates[keep], values[keep]
    return candidates[np.lexsort((candidates, -values))]


def _value(logit: float, lse: float) -> float:
    lp = float(logit) - lse
    return lp if np.isfinite(lp) else FORBIDDEN_LOGPROB


class LogprobRecorder:
    """Turns logits rows into ``TokenLogprob`` records; caches token bytes (``piece(token)``)."""

    def __init__(self, n_vocab: int, piece: Callable[[int], bytes]):
        self.n_vocab = n_vocab
        self._piece = piece
        self._pieces: dict[int, bytes] = {}
        self._buf = np.empty(n_vocab, np.float32)

    def piece(self, token: int) -> bytes:
        p = self._pieces.get(token)
        if p is None:
            p = self._pieces[token] = self._piece(token)
        return p

    def record(self, row: np.ndarray, token: int, n_top: int) -> TokenLogprob:
        """The log-probability of ``token`` under logits ``row`` and the ``n_top`` likeliest tokens."""
        peak = float(row.max())
        lse = logsumexp(row, self._buf, peak)
        top = tuple(TokenLogprob(int(t), self.piece(int(t)), _value(row[t], lse))
                    for t in top_tokens(row, min(n_top, MAX_TOP), peak))
        return TokenLogprob(token, self.piece(token), _value(row[token], lse), top)
