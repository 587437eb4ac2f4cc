"""Continuous batching over a transformers model: one worker thread, one forward per step.

Each step: drop cancelled and expired requests (their cache rows go with them), prefill the
newcomers that fit into free slots as one left-padded batch and merge their KV cache rows into
the running batch, then decode one token for every running sequence with a single forward over
the whole batch. Sampling is per sequence. Models whose cache layers are not plain full
attention (sliding windows) cannot merge rows: newcomers then wait until the batch drains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from llmserve.engines.hf.detok import IncrementalDetokenizer
from llmserve.engines.hf.adapters import HFAdapters
from llmserve.engines.hf.kvbatch import KVBatch, mergeable, new_cache
from llmserve.engines.hf.model import LoadedModel
from llmserve.engines.hf.sampling import Sampler
from llmserve.engines.worker import Emit, Output, Queued, WorkerLoop
from llmserve.errors import EngineError, LLMServeError
from llmserve.structured import GrammarViolation, Guide, MaskBatch
from llmserve.types import Delta, FinishReason, TokenLogprob, Usage

logger = logging.getLogger(__name__)

@dataclass(eq=False)
class Sequence(Queued):
    """One request's decoding state; worker-thread only, but for ``cancelled``."""

    sampler: Sampler | None = None
    detok: IncrementalDetokenizer | None = None
    generated: list[int] = field(default_factory=list)
    pending: int | None = None  # sampled and emitted, not yet in the cache
    guide: Guide | None = None  # structured output: masks this sequence's tokens


class Scheduler(WorkerLoop[Sequence]):
    sequence_type = Sequence

    def __init__(self, loaded: LoadedModel, *, n_slots: int, max_queue: int, queue_timeout: float | None,
                 prefill_tokens: int, threads: int, emit: Emit):
        super().__init__(n_slots=n_slots, max_queue=max_queue, queue_timeout=queue_timeout, emit=emit,
                         name="llmserve-hf")
        self.m = loaded
        self.adapters = HFAdapters(loaded)
        self.prefill_tokens = prefill_tokens
        self.threads = threads
        self.can_merge = mergeable(new_cache(loaded.model.config))
        self._running: list[Sequence] = []  # row i of self._kv belongs to self._running[i]
        self._kv: KVBatch | None = None
        self._pieces: dict[int, bytes] = {}  # token id -> its bytes, for logprobs
        self._masks = MaskBatch(n_slots, loaded.model.config.get_text_config().vocab_size)

    def stop(self) -> None:
        super().stop()
        self._masks.close()

    # -- worker thread ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _worker_context(self) -> Iterator[None]:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            yield

    def _step(self) -> None:
        out: list[tuple[Sequence, Output]] = []
        self._reap(out)
        self._admit(out)
        if self._running:
            self._decode(out)
        if out:
            self.emit(out)

    def _reap(self, out: list[tuple[Sequence, Output]]) -> None:
        self._reap_waiting(out)
        if any(seq.cancelled for seq in self._running):
            self._keep([i for i, seq in enumerate(self._running) if not seq.cancelled])

    def _admit(self, out: list[tuple[Sequence, Output]]) -> None:
        if not self._waiting or (self._running and not self.can_merge):
            return
        group: list[Sequence] = []
        longest = 0
        while self._waiting and len(self._running) + len(group) < self.n_slots:
            nxt = self._waiting[0]
            width = max(longest, len(nxt.prompt))
            if group and (len(group) + 1) * width > self.prefill_tokens:
                break  # the rest wait for the next step
            group.append(self._waiting.popleft())
            longest = width
        if not group:
            return
        self._started(group)
        for seq in group:
            seq.sampler = Sampler(seq.request.sampling, seq.prompt)
            seq.detok = IncrementalDetokenizer(self.m.tokenizer, seq.prompt)
        self._running.extend(group)  # first, so that a failing prefill fails them too
        self._start_masks(group)  # filled on a helper thread while the forward runs
        logits, kv = self._prefill(group, longest)
        if self._kv is None:
            self._kv = kv
        else:
            self._kv.extend(kv)
        self._sample(logits, group, out)

    def _prefill(self, group: list[Sequence], width: int) -> tuple[torch.Tensor, KVBatch]:
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for row, seq in enumerate(group):
            n = len(seq.prompt)
            ids[row, width - n:] = torch.tensor(seq.prompt, dtype=torch.long)
            mask[row, width - n:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = new_cache(self.m.model.config)
        with self.adapters.lock:  # LoRA: one adapter per row
            logits = self.m.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                  past_key_values=cache, use_cache=True, logits_to_keep=1,
                                  **self.adapters.forward_kwargs([seq.request.adapter for seq in group])).logits[:, -1]
        self.steps += 1
        return logits, KVBatch(cache, mask)

    def _decode(self, out: list[tuple[Sequence, Output]]) -> None:
        kv = self._kv
        ids = torch.tensor([[seq.pending] for seq in self._running], dtype=torch.long)
        positions = kv.positions()
        kv.grow()
        self._start_masks(self._running)
        with self.adapters.lock:
            logits = self.m.model(input_ids=ids, attention_mask=kv.mask, position_ids=positions, past_key_values=kv.cache,
                                  use_cache=True, **self.adapters.forward_kwargs([seq.request.adapter for seq in self._running])).logits[:, -1]
        self.steps += 1
        self._sample(logits, list(self._running), out)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence], out: list[tuple[Sequence, Output]]) -> None:
        """``seqs`` are the last ``len(logits)`` rows of the batch; finished rows leave it."""
        logits = logits.float()
        self._apply_masks(logits, seqs)
        greedy = logits.argmax(-1).tolist()
        for row, seq in enumerate(seqs):
            sampler = seq.sampler
            if sampler.trivial:
                out.append((seq, self._advance(seq, greedy[row])))
                continue
            biased = sampler.biased(logits[row])
            token = sampler.sample(biased)
            out.append((seq, self._with_logprobs(seq, biased, token, self._advance(seq, token))))
        if any(seq.pending is None for seq in self._running):
            self._keep([i for i, seq in enumerate(self._running) if seq.pending is not None])

    # -- structured output -----------------------------------------------------------------------
    def _start_masks(self, seqs: list[Sequence]) -> None:
        self._masks.start([(seq.guide, row) for row, seq in enumerate(seqs) if seq.guide is not None and seq.guide.active])

    def _apply_masks(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        """Forbidden tokens get -inf IN PLACE in ``logits`` (rows of ``seqs``) before any
        sampling, so everything reading them later (logprobs) sees the masked values."""
        forbidden = self._masks.wait()
        width = logits.shape[-1]
        for row, seq in enumerate(seqs):
            if seq.guide is not None and seq.guide.active:
                logits[row].masked_fill_(torch.from_numpy(forbidden[row, :width]), float("-inf"))

    def _guide(self, seq: Sequence, token: int, text: str) -> Output | None:
        """Feeds the sampled token to the sequence's grammar; returns the sequence's last output
        when that ends it (complete: ``stop``; broken: an EngineError for it alone), else None."""
        try:
            seq.guide.accept(token)
        except GrammarViolation as exc:
            logger.warning("request %s broke its grammar: %s", seq.request.request_id, exc)
            return EngineError(f"structured output failed: {exc}")
        if seq.guide.done:  # nothing else may follow
            return Delta(text + seq.detok.flush(), (token,), FinishReason.STOP, self._usage(seq))
        return None

    def _advance(self, seq: Sequence, token: int) -> Output:
        """Account one sampled token; a finished sequence gets ``pending = None``."""
        seq.pending = None
        if token in self.m.eos_ids and not seq.request.sampling.ignore_eos:
            return Delta(seq.detok.flush(), (token,), FinishReason.STOP, self._usage(seq, 1))
        seq.generated.append(token)
        seq.sampler.accept(token)
        text = seq.detok.add(token)
        if seq.guide is not None and (end := self._guide(seq, token, text)) is not None:
            return end
        max_new = seq.request.sampling.max_tokens
        total = len(seq.prompt) + len(seq.generated)
        if (max_new is not None and len(seq.generated) >= max_new) or total >= self.m.max_context:
            return Delta(text + seq.detok.flush(), (token,), FinishReason.LENGTH, self._usage(seq))
        seq.pending = token
        return Delta(text, (token,))

    def _with_logprobs(self, seq: Sequence, row: torch.Tensor, token: int, delta: Output) -> Output:
        """``delta`` with the sampled token's logprob record, when the request asked for them."""
        if seq.request.sampling.logprobs is None or not isinstance(delta, Delta) or (
                delta.finish_reason is FinishReason.STOP and not delta.text and token in self.m.eos_ids):
            return delta
        lp, top = seq.sampler.logprobs(row, token)
        record = TokenLogprob(token, self._piece(token), lp, tuple(TokenLogprob(t, self._piece(t), v) for t, v in top))
        return dataclasses.replace(delta, logprobs=(record,))

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.m.tokenizer.decode([token]).encode("utf-8")
        return piece

    @staticmethod
    def _usage(seq: Sequence, extra: int = 0) -> Usage:
        """``extra`` counts an end-of-generation token, which vLLM counts as generated too."""
        return Usage(len(seq.prompt), len(seq.generated) + extra)

    def _keep(self, rows: list[int]) -> None:
        """Keep these rows of the running batch; every other sequence leaves it."""
        kept = [self._running[i] for i in rows]
        for seq in self._running:
            if seq not in kept:
                self._forget(seq, waiting=False)
        self._running = kept
        if not kept:
            self._kv = None
        else:
            self._kv.keep(rows)

    def _fail_running(self, error: LLMServeError) -> list[tuple[Sequence, Output]]:
        out: list[tuple[Sequence, Output]] = [(seq, error) for seq in self._running]
        self._keep([])
        return out
