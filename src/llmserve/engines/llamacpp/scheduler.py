"""The continuous-batching loop: one worker thread, one ``llama_decode`` per step for all sequences.

Each step: drop cancelled and expired requests, give free slots to waiting requests (reusing the
longest cached prefix of the prompt wherever it lives, see ``kvcache.py``), then build one batch
with the next token of every decoding sequence plus as much pending prefill as the step's budget
allows (``budget.py``), decode it, and sample every sequence that produced logits.

KV cells are accounted before llama.cpp is asked for them: a request is admitted when the cells
of its uncached prompt are free (idle cached prefixes are evicted least recently used first to
make them so; otherwise it waits, in order), and a decoding sequence that finds no free cell ends
with ``length``. Requests whose prompts share a long prefix with a prompt being prefilled right
now wait until that prefix is in the cache, then share its cells instead of prefilling it again.
"""

from __future__ import annotations

import codecs
import logging
import time
from dataclasses import dataclass, field

import llama_cpp as ll

from llmserve.engines.llamacpp.budget import PrefillBudget
from llmserve.engines.llamacpp.kvcache import Ledger, Slot, common_prefix
from llmserve.engines.llamacpp.model import LlamaContext, LlamaModel
from llmserve.engines.llamacpp.sampler import BatchSampler, SequenceSampler
from llmserve.engines.worker import Emit, Output, Queued, WorkerLoop
from llmserve.errors import EngineError, LLMServeError, Overloaded
from llmserve.types import Delta, FinishReason, Usage

logger = logging.getLogger(__name__)
# a waiting prompt whose prefix this much longer than what the cache holds is being prefilled for
# another request right now waits for those cells rather than prefilling the same tokens again
MIN_DEFER = 32
# cells a request needs free beyond its uncached prompt to be admitted (its first tokens)
HEADROOM = 16
LLAMA_NO_KV_SLOT = 1  # llama_decode: no KV slot for the batch (nothing was decoded)


@dataclass(eq=False)
class Sequence(Queued):
    """One request's decoding state; worker-thread only, but for ``cancelled``."""

    slot: Slot | None = None
    n_prefilled: int = 0
    n_cached: int = 0
    generated: list[int] = field(default_factory=list)
    pending: int | None = None  # sampled, emitted, not yet decoded
    sampler: SequenceSampler | None = None
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    @property
    def to_prefill(self) -> int:
        return len(self.prompt) - self.n_prefilled


class Scheduler(WorkerLoop[Sequence]):
    sequence_type = Sequence

    def __init__(self, model: LlamaModel, ctx: LlamaContext, *, n_slots: int, max_queue: int,
                 queue_timeout: float | None, emit: Emit, unified: bool = True):
        super().__init__(n_slots=n_slots, max_queue=max_queue, queue_timeout=queue_timeout, emit=emit,
                         name="llmserve-llamacpp")
        self.model = model
        self.ctx = ctx
        self.kv = Ledger(ctx, n_slots, unified=unified)
        self.slots = self.kv.slots
        self.n_batch = ctx.n_batch
        self.budget = PrefillBudget(self.n_batch)
        self.prefilled = 0  # prompt tokens decoded so far (the rest came from the cache)
        self._batch = ll.llama_batch_init(self.n_batch, 0, 1)
        self._sampler = BatchSampler(model.n_vocab, n_slots)

    def stop(self) -> None:
        super().stop()
        ll.llama_batch_free(self._batch)

    # -- worker thread ------------------------------------------------------------------------
    def _step(self) -> None:
        out: list[tuple[Sequence, Output]] = []
        self._reap(out)
        self._admit()
        self._make_room_to_grow(out)
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

    # -- admission ------------------------------------------------------------------------------
    def _admit(self) -> None:
        """Waiting requests take idle slots in arrival order while their cells fit; a request
        that waits for a prefix being prefilled right now lets the ones behind it pass."""
        for seq in list(self._waiting):
            if not any(s.seq is None for s in self.slots):
                return
            donor, shared = self.kv.longest_prefix(seq.prompt)
            if self._prefix_coming(seq, shared):
                continue
            keep = min(shared, len(seq.prompt) - 1)  # the last prompt token is decoded again for its logits
            slot = self._slot_for(donor, keep)
            if slot is not donor:
                self.kv.clear(slot)  # the least recently used idle prefix: the first to go in any case
            if not self._fits(seq, keep, keep_cached=donor):
                return  # in order: later requests do not overtake one waiting for cells
            if slot is donor:
                self.kv.truncate(slot, keep)
            elif donor is not None:
                keep = self.kv.share(donor, slot, keep)
            else:
                keep = 0
            self._waiting.remove(seq)
            seq.slot, slot.seq = slot, seq
            seq.n_prefilled = seq.n_cached = keep
            self.kv.reserved += seq.to_prefill
            seq.sampler = SequenceSampler(seq.request.sampling, n_vocab=self.model.n_vocab,
                                          penalty_window=self.ctx.n_ctx_seq)
            self._started([seq])

    def _slot_for(self, donor: Slot | None, keep: int) -> Slot:
        """The idle slot a request takes. On a unified cache sharing a prefix costs nothing, so the
        donor's own slot is taken only when it holds no more than the shared prefix (or is the
        least recently used anyway): other cached conversations stay whole. On a split cache the
        donor's slot is taken whenever it is idle (a copy moves a whole stream)."""
        idle = self.kv.idle()
        if donor is None or donor.seq is not None:
            return idle[0]
        if not self.kv.unified or len(donor.tokens) <= keep + 1 or idle[0] is donor:
            return donor
        return idle[0]

    def _prefix_coming(self, seq: Sequence, cached: int) -> bool:
        """A prompt being prefilled now shares a longer prefix with ``seq``'s than the cache holds:
        ``seq`` should wait for those cells (``n > 1`` siblings, a batch with one instruction)."""
        for slot in self.slots:
            other = slot.seq
            if other is None or other.pending is not None or other.to_prefill == 0:
                continue
            ahead = min(common_prefix(other.prompt, seq.prompt), len(seq.prompt) - 1)
            if ahead >= cached + MIN_DEFER and other.n_prefilled < ahead:
                return True
        return False

    def _fits(self, seq: Sequence, keep: int, keep_cached: Slot | None) -> bool:
        """Whether ``seq``'s uncached prompt (plus a little room to answer) fits beside the
        running sequences' next cells; evicts idle cached prefixes least recently used first
        (never ``keep_cached``, whose prefix it will use) to make it fit."""
        if not self.kv.unified:
            return len(seq.prompt) + 1 <= self.kv.capacity
        growing = sum(1 for s in self.slots if s.seq is not None)  # each running sequence grows a cell a step
        # a few cells to answer in, never more than it may use: a prompt that fits alone fits
        want = min(HEADROOM, seq.request.sampling.max_tokens or HEADROOM, self.kv.capacity - len(seq.prompt))
        return self.kv.make_room(len(seq.prompt) - keep + want + growing, keep=keep_cached)

    def _make_room_to_grow(self, out: list[tuple[Sequence, Output]]) -> None:
        """Every decoding sequence needs one more cell this step: evict idle prefixes for them,
        and end the most recently admitted ones with ``length`` when the cache is full."""
        growing = [s.seq for s in self.slots if s.seq is not None and s.seq.pending is not None]
        if not growing:
            return
        if self.kv.unified:
            if self.kv.make_room(len(growing)):
                return
            short = len(growing) - self.kv.free - self.kv.evictable()
            self.kv.make_room(len(growing) - short)
            victims = sorted(growing, key=lambda s: s.request.timing.started_at or 0.0)[-short:]
        else:
            victims = [seq for seq in growing if self.kv.room(seq.slot) < 1]
        for seq in victims:
            logger.info("KV cache full: request %s ends at %d tokens", seq.request.request_id,
                        len(seq.prompt) + len(seq.generated))
            text = seq.decoder.decode(b"", final=True)
            out.append((seq, self._finish(seq, Delta(text, (), FinishReason.LENGTH, self._usage(seq)))))

    # -- one step -------------------------------------------------------------------------------
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
        budget = self.budget.tokens(len(decoding))
        # the shortest remaining prompts first: a chat's prompt is not stuck behind a long document
        for slot in sorted((s for s in self.slots if s.seq is not None and s.seq.pending is None),
                           key=lambda s: (s.seq.to_prefill, s.seq.enqueued_at)):
            seq = slot.seq
            if budget <= 0:
                break
            chunk = seq.prompt[seq.n_prefilled: seq.n_prefilled + budget]
            budget -= len(chunk)
            last = seq.n_prefilled + len(chunk) == len(seq.prompt)
            base = len(slot.tokens)
            for i, token in enumerate(chunk):
                add(token, base + i, slot.seq_id, last and i == len(chunk) - 1)
            prefill.append((seq, len(chunk), n - 1 if last else -1))
        batch.n_tokens = n
        return decoding, prefill

    def _decode(self, decoding, prefill, out: list[tuple[Sequence, Output]]) -> None:
        t0 = time.perf_counter()
        rc = ll.llama_decode(self.ctx.ptr, self._batch)
        self.steps += 1
        self.kv.decoded()
        if rc != 0:
            self._decode_failed(rc, decoding, prefill, out)
            return
        self.budget.record(len(decoding), sum(length for _, length, _ in prefill), time.perf_counter() - t0)
        sample: list[tuple[Sequence, int]] = []
        for seq, idx in decoding:
            self.kv.extend(seq.slot, (seq.pending,))
            seq.pending = None
            sample.append((seq, idx))
        for seq, length, idx in prefill:
            self.kv.extend(seq.slot, seq.prompt[seq.n_prefilled: seq.n_prefilled + length])
            self.kv.reserved -= length
            self.prefilled += length
            seq.n_prefilled += length
            if idx >= 0:
                sample.append((seq, idx))
        tokens = self._sampler.sample(self.ctx.ptr, [(seq.sampler, idx) for seq, idx in sample])
        for (seq, _), token in zip(sample, tokens):
            out.append((seq, self._advance(seq, token)))

    def _decode_failed(self, rc: int, decoding, prefill, out: list[tuple[Sequence, Output]]) -> None:
        """The ledger keeps llama.cpp from running out of cells, so this is a bug or a foreign
        cache layout: no sequence of the batch is lost silently, none is left half-written."""
        logger.error("llama_decode returned %d for a batch of %d tokens (%d cells used of %d)",
                     rc, self._batch.n_tokens, self.kv.used, self.kv.capacity)
        for seq, _ in decoding:
            self.ctx.seq_rm(seq.slot.seq_id, len(seq.slot.tokens), -1)
            if rc == LLAMA_NO_KV_SLOT:  # the cache is full: the answer ends here, as its length
                text = seq.decoder.decode(b"", final=True)
                out.append((seq, self._finish(seq, Delta(text, (), FinishReason.LENGTH, self._usage(seq)))))
            else:
                out.append((seq, EngineError(f"llama_decode failed ({rc})")))
                self._release(seq.slot)
        for seq, _, _ in prefill:
            self.ctx.seq_rm(seq.slot.seq_id, len(seq.slot.tokens), -1)
            error = (Overloaded("the KV cache is full; try again shortly", retry_after=1) if rc == LLAMA_NO_KV_SLOT
                     else EngineError(f"llama_decode failed ({rc})"))
            out.append((seq, error))
            self._release(seq.slot)

    def _advance(self, seq: Sequence, token: int) -> Delta:
        """Account one sampled token; finished sequences leave their slot (KV kept for reuse)."""
        n_prompt = len(seq.prompt)
        if self.model.is_eog(token) and not seq.request.sampling.ignore_eos:
            text = seq.decoder.decode(b"", final=True)
            return self._finish(seq, Delta(text, (token,), FinishReason.STOP, self._usage(seq, 1)))
        seq.generated.append(token)
        text = seq.decoder.decode(self.model.piece(token))
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
        """The request leaves ``slot``; what its KV holds stays cached for the next prompt, but
        for a prompt cut short (its unwritten cells are no longer promised)."""
        seq = slot.seq
        slot.seq = None
        self.kv.touch(slot)
        if seq is None:
            return
        self.kv.reserved -= seq.to_prefill
        seq.n_prefilled = len(seq.prompt)
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
                self._release(slot)
                self.kv.clear(slot)
        return out
