"""Per-sequence token choice over one row of logits, with vLLM's meanings.

``logit_bias`` is added to the row first (``biased``); logprobs are taken from that row, before
penalties and temperature, as vLLM reports them (``logprobs``).

Order: repetition penalty (prompt and output tokens, HF/vLLM style), presence and frequency
penalties (output tokens, OpenAI style), then greedy argmax, or temperature, top-k, top-p,
min-p and a draw from the sequence's own seeded generator.
"""

from __future__ import annotations

import torch

from llmserve.types import FORBIDDEN_LOGPROB, SamplingParams

MAX_TOP = 20


class Sampler:
    """Sampling state of one sequence: its generator and the token counts penalties need."""

    def __init__(self, params: SamplingParams, prompt: tuple[int, ...]):
        self.params = params
        self._generator: torch.Generator | None = None
        if not params.greedy:
            self._generator = torch.Generator()
            if params.seed is not None:
                self._generator.manual_seed(params.seed & 0xFFFF_FFFF_FFFF_FFFF)
            else:
                self._generator.seed()
        self._penalised = (
            params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        )
        self._seen = torch.tensor(sorted(set(prompt)), dtype=torch.long) if self._penalised else None
        self._output: list[int] = []
        self._bias = None
        if params.logit_bias:
            ids, values = zip(*params.logit_bias)
            self._bias = torch.tensor(ids, dtype=torch.long), torch.tensor(values, dtype=torch.float32)

    @property
    def trivial(self) -> bool:
        """Plain greedy on the raw row, no logprobs: the batch can take one argmax for all such rows."""
        return self.params.greedy and not self._penalised and self._bias is None and self.params.logprobs is None

    def biased(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with ``logit_bias`` added (a copy; the row itself when there is none)."""
        if self._bias is None:
            return logits
        logits = logits.clone()
        logits[self._bias[0]] += self._bias[1]
        return logits

    def logprobs(self, logits: torch.Tensor, token: int) -> tuple[float, list[tuple[int, float]]]:
        """The log-probability of ``token`` under the (biased) row, and the ``params.logprobs``
        likeliest tokens with theirs, most likely first; forbidden tokens have FORBIDDEN_LOGPROB."""
        lp = torch.log_softmax(logits, dim=-1)

        def value(x: float) -> float:
            return x if x != float("-inf") else FORBIDDEN_LOGPROB

        k = min(self.params.logprobs or 0, MAX_TOP, lp.numel())
        top = torch.topk(lp, k) if k else None
        alternatives = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
        return value(float(lp[token])), [(t, value(v)) for t, v in alternatives]

    def accept(self, token: int) -> None:
        if self._penalised:
            self._output.append(token)

    def sample(self, logits: torch.Tensor) -> int:
        """``logits``: one row, float32, shape [vocab]."""
        p = self.params
        if self._penalised:
            logits = self._penalise(logits.clone())
        if p.greedy:
            return int(torch.argmax(logits))
        logits = logits / p.temperature
        if p.top_k > 0 and p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
            drop = cum - torch.softmax(sorted_logits, dim=-1) > p.top_p  # keep the token crossing top_p
            logits = logits.scatter(0, order[drop], float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if p.min_p > 0.0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        return int(torch.multinomial(probs, 1, generator=self._generator))

    def _penalise(self, logits: torch.Tensor) -> torch.Tensor:
        p = self.params
        out = torch.tensor(self._output, dtype=torch.long)
        if p.repetition_penalty != 1.0:
            seen = torch.unique(torch.cat([self._seen, out])) if out.numel() else self._seen
            picked = logits[seen]
            logits[seen] = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
        if out.numel() and (p.presence_penalty or p.frequency_penalty):
            tokens, counts = torch.unique(out, return_counts=True)
            logits[tokens] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty
        return logits
