"""Per-sequence llama.cpp sampler chains built from ``SamplingParams``."""

from __future__ import annotations

import llama_cpp as ll

from llmserve.types import SamplingParams


def build_sampler(params: SamplingParams, *, n_vocab: int, penalty_window: int):
    """A sampler chain for one sequence; the caller frees it with ``free_sampler``.

    Order as llama.cpp's own defaults: penalties, top-k, top-p, min-p, temperature, then the
    seeded draw; ``temperature == 0`` is greedy after the penalties.
    """
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


def free_sampler(chain) -> None:
    ll.llama_sampler_free(chain)
