"""The continuous-batching loop: one worker thread, one ``llama_decode`` per step for all sequences.

Each step: drop cancelled and expired requests, give free slots to waiting requests (preferring
the slot whose KV cache already holds the longest prefix of the prompt), then build one batch
with the next token of every decoding sequence plus as much pending prefill as the per-step
token budget allows, decode it, and sample every sequence that produced logits.
"""

from __future__ import annotations

import codecs
import logging
import time
from dataclasses import dataclass, field

import llama_cpp as ll

from llmserve.engines.llamacpp.model import LlamaContext, LlamaModel
from llmserve.engines.llamacpp.sampler import BatchSampler, SequenceSampler
from llmserve.engines.worker import Emit, Output, Queued, WorkerLoop
from llmserve.errors import EngineError, LLMServeError
from llmserve.structured import GrammarViolation, Guide, MaskBatch, apply_bitmask
from llmserve.types import Delta, FinishReason, Usage

logger = logging.getLogger(__name__)
# a cross-slot KV copy moves a whole stream (~23 MB for the bundled model at 1024 cells: a few ms);
# prefilling this many tokens costs far more
MIN_COPY = 16


@dataclass(eq=False)
class Sequence(Queued):
    """One request's decoding state; worker-thread only, but for ``cancelled``."""

    slot: Slot | None = None
    n_prefilled: int = 0
    n_cached: int = 0
    generated: list[int] = field(default_factory=list)
    pending: int | None = None  # sampled, emitted, not yet decoded
    sampler: SequenceSampler | None = None
    guide: Guide | None = None  # structured output: masks this sequence's tokens
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))


@dataclass(eq=False)
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what the KV cache holds for seq_id
    seq: Sequence | None = None
    last_used: float = 0.0


def common_prefix(a: list[int], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scheduler(WorkerLoop[Sequence]):
    sequence_type = Sequence

    def __init__(self, model: LlamaModel, ctx: LlamaContext, *, n_slots: int, max_queue: int,
                 queue_timeout: float | None, emit: Emit):
        super().__init__(n_slots=n_slots, max_queue=max_queue, queue_timeout=queue_timeout, emit=emit,
                         name="llmserve-llamacpp")
        self.model = model
        self.ctx = ctx
        self.slots = [Slot(i) for i in range(n_slots)]
        self.n_batch = ctx.n_batch
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self._sampler = BatchSampler(model.n_vocab, n_slots)
        self._masks = MaskBatch(n_slots, model.n_vocab)  # one row per slot

    def stop(self) -> None:
        super().stop()
        ll.llama_batch_free(self._batch)
        self._masks.close()

    # -- worker thread ------------------------------------------------------------------------
    def _step(self) -> None:
        out: list[tuple[Sequence, Output]] = []
        self._reap(out)
        self._admit(out)
        decoding, prefill = self._fill_batch()
        if decoding or prefill:
            self._decode(decoding, prefill, out)
        if out:
            self.emit(out)

    def _reap(self, out: list[tuple[Sequence, Output]]) -> None:
        self._reap_waiting(out)
        for slot in self.slots:
            if slot.seq is not None and slot.seq.cancelled:
                self._release(slot)

    def _admit(self, out: list[tuple[Sequence, Output]]) -> None:
        copied: set[int] = set()  # slots whose copied KV only lands at the next decode
        while self._waiting:
            free = [s for s in self.slots if s.seq is None]
            if not free:
                return
            seq = self._waiting.popleft()
            slot = max(free, key=lambda s: (common_prefix(s.tokens, seq.prompt), not s.tokens, -s.last_used))
            keep = common_prefix(slot.tokens, seq.prompt)
            keep = max(keep, self._copy_prefix(slot, seq.prompt, keep, copied))
            keep = min(keep, len(seq.prompt) - 1)  # the last prompt token is decoded again for its logits
            if not self.ctx.seq_rm(slot.seq_id, keep, -1):
                self.ctx.seq_rm(slot.seq_id)
                keep = 0
            del slot.tokens[keep:]
            seq.slot, slot.seq = slot, seq
            seq.n_prefilled = seq.n_cached = keep
            seq.sampler = SequenceSampler(seq.request.sampling, n_vocab=self.model.n_vocab,
                                          penalty_window=self.ctx.n_ctx_seq)
            self._started([seq])

    def _copy_prefix(self, slot: Slot, prompt: tuple[int, ...], have: int, copied: set[int]) -> int:
        """When another slot's KV holds a longer prefix of ``prompt`` than ``slot`` does (every chat
        request starts with the template's system prompt), copies it over instead of prefilling it
        again; returns the tokens now shared (0: nothing copied).

        Slots are separate KV streams, and llama.cpp copies across streams only whole (the data
        moves at the next decode, before that batch writes): the copy's tail is dropped after."""
        donors = [s for s in self.slots if s is not slot and s.seq_id not in copied]
        best = max(donors, key=lambda s: common_prefix(s.tokens, prompt), default=None)
        shared = common_prefix(best.tokens, prompt) if best is not None else 0
        if shared < have + MIN_COPY:
            return 0
        ll.llama_memory_seq_cp(self.ctx.memory, best.seq_id, slot.seq_id, -1, -1)  # -1, -1: whole
        copied.add(slot.seq_id)
        slot.tokens[:] = best.tokens[:shared]
        self.ctx.seq_rm(slot.seq_id, shared, -1)
        return shared

    def _fill_batch(self) -> tuple[list[tuple[Sequence, int]], list[tuple[Sequence, int, int]]]:
        """Returns the decoding sequences with their logit index, and prefill chunks
        (sequence, chunk length, logit index or -1)."""
        batch = self._batch
        n = 0

        def add(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = logits
            n += 1

        decoding: list[tuple[Sequence, int]] = []
        for slot in self.slots:
            seq = slot.seq
            if seq is not None and seq.pending is not None:
                decoding.append((seq, n))
                add(seq.pending, len(slot.tokens), slot.seq_id, True)
        prefill: list[tuple[Sequence, int, int]] = []
        for slot in sorted((s for s in self.slots if s.seq is not None and s.seq.pending is None),
                           key=lambda s: s.seq.enqueued_at):
            seq = slot.seq
            budget = self.n_batch - n
            if budget <= 0:
                break
            chunk = seq.prompt[seq.n_prefilled: seq.n_prefilled + budget]
            last = seq.n_prefilled + len(chunk) == len(seq.prompt)
            base = len(slot.tokens)
            for i, token in enumerate(chunk):
                add(token, base + i, slot.seq_id, last and i == len(chunk) - 1)
            prefill.append((seq, len(chunk), n - 1 if last else -1))
        batch.n_tokens = n
        return decoding, prefill

    def _decode(self, decoding, prefill, out: list[tuple[Sequence, Output]]) -> None:
        self._start_masks(decoding, prefill)  # filled on a helper thread while llama_decode runs
        rc = ll.llama_decode(self.ctx.ptr, self._batch)
        self.steps += 1
        if rc != 0:
            logger.error("llama_decode returned %d for a batch of %d tokens", rc, self._batch.n_tokens)
            for seq in [s for s, _ in decoding] + [s for s, _, _ in prefill]:
                out.append((seq, EngineError(f"llama_decode failed ({rc})")))
                self.ctx.seq_rm(seq.slot.seq_id)
                seq.slot.tokens.clear()
                self._release(seq.slot)
            return
        sample: list[tuple[Sequence, int]] = []
        for seq, idx in decoding:
            seq.slot.tokens.append(seq.pending)
            seq.pending = None
            sample.append((seq, idx))
        for seq, length, idx in prefill:
            seq.slot.tokens.extend(seq.prompt[seq.n_prefilled: seq.n_prefilled + length])
            seq.n_prefilled += length
            if idx >= 0:
                sample.append((seq, idx))
        self._apply_masks(sample)
        tokens = self._sampler.sample(self.ctx.ptr, [(seq.sampler, idx) for seq, idx in sample])
        for (seq, _), token in zip(sample, tokens):
            out.append((seq, self._advance(seq, token)))

    # -- structured output: masks for the constrained sequences of a step ------------------------
    def _start_masks(self, decoding, prefill) -> None:
        rows = [(seq.guide, seq.slot.seq_id) for seq, _ in decoding if seq.guide is not None and seq.guide.active]
        rows += [(seq.guide, seq.slot.seq_id) for seq, _, idx in prefill
                 if idx >= 0 and seq.guide is not None and seq.guide.active]
        self._masks.start(rows)

    def _apply_masks(self, sample: list[tuple[Sequence, int]]) -> None:
        """Masks the logits IN PLACE in llama.cpp's buffer, before any sampling: the numpy path,
        the llama.cpp chains and anything reading the logits later (logprobs) see forbidden
        tokens at -inf."""
        forbidden = self._masks.wait()
        for seq, idx in sample:
            if seq.guide is not None and seq.guide.active:
                apply_bitmask(self._sampler.logits(self.ctx.ptr, idx), forbidden[seq.slot.seq_id])

    def _guide(self, seq: Sequence, token: int, piece: bytes, text: str) -> Output | None:
        """Feeds the sampled token to the sequence's grammar; returns the sequence's last output
        when that ends it (the grammar is complete: ``stop``; it broke: an EngineError for this
        sequence alone), else None."""
        try:
            seq.guide.accept(token, piece)
        except GrammarViolation as exc:
            logger.warning("request %s broke its grammar: %s", seq.request.request_id, exc)
            self._release(seq.slot)
            return EngineError(f"structured output failed: {exc}")
        if seq.guide.done:  # nothing else may follow
            text += seq.decoder.decode(b"", final=True)
            return self._finish(seq, Delta(text, (token,), FinishReason.STOP, self._usage(seq)))
        return None

    def _advance(self, seq: Sequence, token: int) -> Output:
        """Account one sampled token; finished sequences leave their slot (KV kept for reuse)."""
        n_prompt = len(seq.prompt)
        if self.model.is_eog(token) and not seq.request.sampling.ignore_eos:
            text = seq.decoder.decode(b"", final=True)
            return self._finish(seq, Delta(text, (token,), FinishReason.STOP, self._usage(seq, 1)))
        seq.generated.append(token)
        piece = self.model.piece(token)
        text = seq.decoder.decode(piece)
        if seq.guide is not None and (end := self._guide(seq, token, piece, text)) is not None:
            return end
        max_new = seq.request.sampling.max_tokens
        if (max_new is not None and len(seq.generated) >= max_new) or n_prompt + len(seq.generated) >= self.ctx.n_ctx_seq:
            text += seq.decoder.decode(b"", final=True)
            return self._finish(seq, Delta(text, (token,), FinishReason.LENGTH, self._usage(seq)))
        seq.pending = token
        return Delta(text, (token,))

    @staticmethod
    def _usage(seq: Sequence, extra: int = 0) -> Usage:
        """``extra`` counts an end-of-generation token, which vLLM counts as generated too."""
        return Usage(len(seq.prompt), len(seq.generated) + extra, seq.n_cached)

    def _finish(self, seq: Sequence, delta: Delta) -> Delta:
        self._release(seq.slot)
        return delta

    def _release(self, slot: Slot) -> None:
        seq = slot.seq
        slot.seq = None
        slot.last_used = time.monotonic()
        if seq is None:
            return
        seq.slot = None
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        self._forget(seq, waiting=False)

    def _fail_running(self, error: LLMServeError) -> list[tuple[Sequence, Output]]:
        out: list[tuple[Sequence, Output]] = []
        for slot in self.slots:
            if slot.seq is not None:
                out.append((slot.seq, error))
                self.ctx.seq_rm(slot.seq_id)
                slot.tokens.clear()
                self._release(slot)
        return out
