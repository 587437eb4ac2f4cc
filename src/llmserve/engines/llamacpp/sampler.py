"""Choosing each sequence's next token from the logits of one decode step.

The plain cases (greedy, and temperature-only sampling, which is what OpenAI's defaults
``top_p=1`` and no penalties ask for) are drawn for all sequences of a step at once in numpy:
llama.cpp's ``dist`` sampler runs a scalar ``expf`` over the whole vocabulary for each sequence,
~0.7 ms per sequence per step with a 49k vocabulary, ~10% of a step at 8 sequences. Temperature
with ``top_p`` alone (the bundled model's defaults: 0.2 and 0.9) is drawn in numpy too
(``nucleus``): llama.cpp's top-p sampler sorts the whole vocabulary, ~0.45 ms a sequence, 15% of a
step at 8 sequences on a Zen 4 core; numpy sorts only the ``NUCLEUS_TOP`` likeliest. Everything
else (top-k, min-p, penalties) goes through a llama.cpp sampler chain per sequence, in llama.cpp's
order.
"""

from __future__ import annotations

import numpy as np
import llama_cpp as ll

from llmserve.types import SamplingParams

_BLOCK = 1024  # the inverse-CDF search sums blocks first, then scans one block
# top-p sorts only the likeliest NUCLEUS_TOP tokens (picked in linear time); when their mass does not
# reach top_p (a flat distribution) the whole vocabulary is sorted
NUCLEUS_TOP = 1024


def _plain(params: SamplingParams) -> bool:
    """No top-k, min-p or penalties; top-p only with a temperature (``nucleus``)."""
    return (params.top_k <= 0 and (params.top_p >= 1.0 or not params.greedy)
            and params.min_p <= 0.0 and params.repetition_penalty == 1.0
            and not params.frequency_penalty and not params.presence_penalty)


def _chain(params: SamplingParams, *, n_vocab: int, penalty_window: int):
    """A llama.cpp chain in llama.cpp's own order: penalties, top-k, top-p, min-p, temperature,
    then the seeded draw; ``temperature == 0`` is greedy after the penalties."""
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())

    def add(sampler) -> None:
        ll.llama_sampler_chain_add(chain, sampler)

    if params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty:
        add(ll.llama_sampler_init_penalties(
            n_vocab, penalty_window, params.repetition_penalty, params.frequency_penalty, params.presence_penalty
        ))
    if params.greedy:
        add(ll.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(ll.llama_sampler_init_top_k(params.top_k))
    if params.top_p < 1.0:
        add(ll.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0.0:
        add(ll.llama_sampler_init_min_p(params.min_p, 1))
    add(ll.llama_sampler_init_temp(params.temperature))
    seed = ll.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
    add(ll.llama_sampler_init_dist(seed))
    return chain


class SequenceSampler:
    """One sequence's sampling state: a numpy generator for the plain cases, else a llama.cpp
    chain. ``close()`` frees the chain."""

    def __init__(self, params: SamplingParams, *, n_vocab: int, penalty_window: int):
        plain = _plain(params)
        self.greedy = plain and params.greedy
        self.top_p = params.top_p if plain and params.top_p < 1.0 else None  # drawn by ``nucleus``
        self.inv_temp = 0.0 if params.greedy else 1.0 / params.temperature
        self.rng = np.random.default_rng(None if params.seed is None else params.seed & 0xFFFFFFFFFFFFFFFF)
        self.chain = None if plain else _chain(params, n_vocab=n_vocab, penalty_window=penalty_window)
        self.bias = _bias(params)

    def close(self) -> None:
        if self.chain is not None:
            ll.llama_sampler_free(self.chain)
            self.chain = None


def _bias(params: SamplingParams) -> tuple[np.ndarray, np.ndarray] | None:
    """``logit_bias`` as (token ids, values) to add to a logits row, or None."""
    if not params.logit_bias:
        return None
    ids, values = zip(*params.logit_bias)
    return np.array(ids, np.intp), np.array(values, np.float32)


def draw(probs: np.ndarray, targets: np.ndarray) -> list[int]:
    """Inverse-CDF draw per row of unnormalized ``probs`` (k, n): the first index whose running
    sum reaches ``targets[i]`` (a uniform times the row's total). Sums block totals, then scans
    one block, so the cost is two passes over the row instead of a full cumulative sum."""
    k, n = probs.shape
    n_blocks = -(-n // _BLOCK)
    padded = n_blocks * _BLOCK
    if padded != n:
        probs = np.concatenate([probs, np.zeros((k, padded - n), probs.dtype)], axis=1)
    block_sums = probs.reshape(k, n_blocks, _BLOCK).sum(axis=2, dtype=np.float64)
    out = []
    for i in range(k):
        running = np.cumsum(block_sums[i])
        b = min(int(np.searchsorted(running, targets[i])), n_blocks - 1)
        before = running[b - 1] if b else 0.0
        inside = np.cumsum(probs[i, b * _BLOCK:(b + 1) * _BLOCK], dtype=np.float64)
        j = min(int(np.searchsorted(inside, targets[i] - before)), _BLOCK - 1)
        # a target past the last nonzero probability (rounding) falls back to the row's argmax
        out.append(b * _BLOCK + j if probs[i, b * _BLOCK + j] > 0 else int(np.argmax(probs[i])))
    return out


def nucleus(logits: np.ndarray, top_p: float, inv_temp: float, u: float) -> int:
    """llama.cpp's top-p then temperature then draw, for one row of logits: the smallest set of the
    likeliest tokens whose probabilities (at temperature 1) reach ``top_p``, then a draw among them
    at ``1 / inv_temp`` with the uniform ``u``."""
    x = logits - logits.max()
    weights = np.exp(x)
    goal = top_p * weights.sum(dtype=np.float64)
    order = np.arange(len(x))
    if len(x) > NUCLEUS_TOP:
        order = np.argpartition(x, -NUCLEUS_TOP)[-NUCLEUS_TOP:]
    order = order[np.argsort(-x[order])]
    mass = np.cumsum(weights[order], dtype=np.float64)
    if mass[-1] < goal and len(order) < len(x):  # a flat distribution: the nucleus reaches further
        order = np.argsort(-x)
        mass = np.cumsum(weights[order], dtype=np.float64)
    keep = order[:min(int(np.searchsorted(mass, goal)), len(order) - 1) + 1]
    scaled = np.cumsum(np.exp(x[keep].astype(np.float64) * inv_temp))
    return int(keep[min(int(np.searchsorted(scaled, u * scaled[-1], side="right")), len(keep) - 1)])


class BatchSampler:
    """Samples every sequence of a step; owns a scratch buffer of ``n_seq`` vocabulary rows."""

    def __init__(self, n_vocab: int, n_seq: int):
        self.n_vocab = n_vocab
        self._scratch = np.empty((n_seq, n_vocab), np.float32)

    def sample(self, ctx, items: list[tuple[SequenceSampler, int]]) -> list[int]:
        """``items``: (sampler, batch index of the logits) pairs; returns one token per item."""
        tokens = [0] * len(items)
        draws: list[int] = []
        for i, (sampler, idx) in enumerate(items):
            if sampler.bias is not None:  # in place: the chain, and logprobs later, read it there
                self.logits(ctx, idx)[sampler.bias[0]] += sampler.bias[1]
            if sampler.chain is not None:
                tokens[i] = ll.llama_sampler_sample(sampler.chain, ctx, idx)
            elif sampler.greedy:
                tokens[i] = int(np.argmax(self.logits(ctx, idx)))
            elif sampler.top_p is not None:
                tokens[i] = nucleus(self.logits(ctx, idx), sampler.top_p, sampler.inv_temp, sampler.rng.random())
            else:
                np.multiply(self.logits(ctx, idx), np.float32(sampler.inv_temp), out=self._scratch[len(draws)])
                draws.append(i)
        if draws:
            x = self._scratch[:len(draws)]
            x -= x.max(axis=1, keepdims=True)
            np.exp(x, out=x)
            totals = x.sum(axis=1, dtype=np.float64)
            targets = np.array([items[i][0].rng.random() for i in draws]) * totals
            for i, token in zip(draws, draw(x, targets)):
                tokens[i] = token
        return tokens

    def logits(self, ctx, idx: int) -> np.ndarray:
        """A writable view of llama.cpp's logits row for batch index ``idx``."""
        return np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))
