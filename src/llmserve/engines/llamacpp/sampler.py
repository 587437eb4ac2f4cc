"""Choosing each sequence's next token from the logits of one decode step.

The plain cases (greedy, and temperature-only sampling, which is what OpenAI's defaults
``top_p=1`` and no penalties ask for) are drawn for all sequences of a step at once in numpy:
llama.cpp's ``dist`` sampler runs a scalar ``expf`` over the whole vocabulary for each sequence,
~0.7 ms per sequence per step with a 49k vocabulary, ~10% of a step at 8 sequences. Everything
else (top-k, top-p, min-p, penalties) goes through a llama.cpp sampler chain per sequence.
"""

from __future__ import annotations

import numpy as np
import llama_cpp as ll

from llmserve.types import SamplingParams

_BLOCK = 1024  # the inverse-CDF search sums blocks first, then scans one block


def _plain(params: SamplingParams) -> bool:
    return (params.top_k <= 0 and params.top_p >= 1.0 and params.min_p <= 0.0 and params.repetition_penalty == 1.0
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
