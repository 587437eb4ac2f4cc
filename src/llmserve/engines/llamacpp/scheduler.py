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
import dataclasses
import logging
import time
from dataclasses import dataclass, field

import llama_cpp as ll

from llmserve.engines.llamacpp.adapters import AdapterSet, LoadedAdapter
from llmserve.engines.llamacpp.budget import PrefillBudget
from llmserve.engines.llamacpp.kvcache import Ledger, Slot, common_prefix
from llmserve.engines.llamacpp.logprobs import LogprobRecorder
from llmserve.engines.llamacpp.model import LlamaContext, LlamaModel
from llmserve.engines.llamacpp.sampler import BatchSampler, SequenceSampler
from llmserve.engines.worker import Emit, Output, Queued, WorkerLoop
from llmserve.errors import EngineError, LLMServeError, Overloaded
from llmserve.structured import GrammarViolation, Guide, MaskBatch, apply_bitmask
from llmserve.types import PRIORITY_LIVE, Delta, FinishReason, TokenLogprob, Usage

logger = logging.getLogger(__name__)
# a waiting prompt whose prefix this much longer than what the cache holds is being prefilled for
# another request right now waits for those cells rather than prefilling the same tokens again
MIN_DEFER = 32
# cells a request needs free beyond its uncached prompt to be admitted (its first tokens)
HEADROOM = 16
# background (batch) sequences wait this long after the last live request before they run again, so
# a steady stream of live requests is not slowed by batch work flapping in between them
LIVE_LINGER_S = 0.2
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
    guide: Guide | None = None  # structured output: masks this sequence's tokens
    lora: LoadedAdapter | None = None  # the LoRA adapter it decodes under (None: the base model)
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    n_resumed: int = 0  # generated tokens moved into the prompt by pauses (see _yield_to_live)
    cached_at_start: int | None = None  # n_cached of the first admission, once paused
    # prompt logprobs (echo): records so far, and the batch index of this step's first prompt token
    prompt_lp: list[TokenLogprob | None] | None = None
    prompt_row: int = -1

    @property
    def to_prefill(self) -> int:
        return len(self.prompt) - self.n_prefilled


class Scheduler(WorkerLoop[Sequence]):
    sequence_type = Sequence

    def __init__(self, model: LlamaModel, ctx: LlamaContext, *, n_slots: int, max_queue: int,
                 queue_timeout: float | None, emit: Emit, unified: bool = True,
                 adapters: AdapterSet | None = None):
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
        self._logprobs = LogprobRecorder(model.n_vocab, model.piece)
        self._masks = MaskBatch(n_slots, model.n_vocab)  # one row per slot
        self.adapters = adapters or AdapterSet(model, ctx)
        self._live_seen = float("-inf")  # when a live request was last waiting or running

    def stop(self) -> None:
        super().stop()
        ll.llama_batch_free(self._batch)
        self._masks.close()

    # -- worker thread ------------------------------------------------------------------------
    def _step(self) -> None:
        out: list[tuple[Sequence, Output]] = []
        self._reap(out)
        self._yield_to_live()
        self._admit()
        self._make_room_to_grow(out)
        ran = False
        for adapter in self._adapter_groups():  # LoRA: one decode per adapter (the base is one)
            decoding, prefill = self._fill_batch(adapter)
            if decoding or prefill:
                self.adapters.apply(adapter)
                self._decode(decoding, prefill, out)
                ran = True
        if not ran and self._waiting:  # only held-back batch work: sleep until a request comes or the hold ends
            with self._cv:
                self._cv.wait(LIVE_LINGER_S / 4)
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
        for seq in self._admissible():
            if not any(s.seq is None for s in self.slots):
                return
            donor, shared = self.kv.longest_prefix(seq.prompt, seq.lora)
            if self._prefix_coming(seq, shared):
                continue
            keep = min(shared, len(seq.prompt) - 1)  # the last prompt token is decoded again for its logits
            if seq.request.sampling.prompt_logprobs is not None:
                keep = 0  # prompt logprobs need the logits of every prompt position
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
            slot.adapter = seq.lora  # an empty slot, a donor of the same adapter, or a prefix shared from one
            seq.n_prefilled = seq.n_cached = keep
            self.kv.reserved += seq.to_prefill
            if seq.sampler is None:  # a resumed sequence keeps its own (its RNG and penalty history)
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
            if other is None or other.pending is not None or other.to_prefill == 0 or other.lora is not seq.lora:
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
    def _adapter_groups(self) -> list[LoadedAdapter | None]:
        """One decode per LoRA adapter among the running sequences (llama.cpp applies adapters
        to a whole decode), the adapter applied now first."""
        return self.adapters.groups([s.seq.lora for s in self.slots if s.seq is not None])

    def _fill_batch(self, adapter: LoadedAdapter | None = None) -> tuple[list[tuple[Sequence, int]], list[tuple[Sequence, int, int]]]:
        """Returns the decoding sequences (of ``adapter``'s group) with their logit index, and
        prefill chunks (sequence, chunk length, logit index or -1)."""
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
            if seq is not None and seq.pending is not None and seq.lora is adapter:
                decoding.append((seq, n))
                add(seq.pending, len(slot.tokens), slot.seq_id, True)
        prefill: list[tuple[Sequence, int, int]] = []
        budget = self.budget.tokens(len(decoding))
        # the shortest remaining prompts first: a chat's prompt is not stuck behind a long document
        for slot in sorted((s for s in self.slots if s.seq is not None and s.seq.pending is None and s.seq.lora is adapter),
                           key=lambda s: (s.seq.to_prefill, s.seq.enqueued_at)):
            seq = slot.seq
            if budget <= 0:
                break
            chunk = seq.prompt[seq.n_prefilled: seq.n_prefilled + budget]
            budget -= len(chunk)
            last = seq.n_prefilled + len(chunk) == len(seq.prompt)
            base = len(slot.tokens)
            every = seq.request.sampling.prompt_logprobs is not None
            seq.prompt_row = n
            for i, token in enumerate(chunk):
                add(token, base + i, slot.seq_id, every or (last and i == len(chunk) - 1))
            prefill.append((seq, len(chunk), n - 1 if last else -1))
        batch.n_tokens = n
        return decoding, prefill

    def _decode(self, decoding, prefill, out: list[tuple[Sequence, Output]]) -> None:
        self._start_masks(decoding, prefill)  # filled on a helper thread while llama_decode runs
        t0 = time.perf_counter()
        rc = ll.llama_decode(self.ctx.ptr, self._batch)
        self.steps += 1
        self.kv.decoded()
        if rc != 0:
            self._masks.wait()
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
            if seq.request.sampling.prompt_logprobs is not None:
                self._score_prompt(seq, length)
        self._apply_masks(sample)
        tokens = self._sampler.sample(self.ctx.ptr, [(seq.sampler, idx) for seq, idx in sample])
        for (seq, idx), token in zip(sample, tokens):
            out.append((seq, self._with_logprobs(seq, idx, token, self._advance(seq, token))))

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

    # -- logprobs: only for the sequences that asked ------------------------------------------
    def _score_prompt(self, seq: Sequence, length: int) -> None:
        """Records the logprobs of the prompt tokens this step's chunk (just decoded) predicts."""
        if seq.prompt_lp is None:
            seq.prompt_lp = [None]  # the first prompt token has nothing before it
        start = seq.n_prefilled - length  # prompt position of the chunk's first token
        k = seq.request.sampling.prompt_logprobs
        for j in range(length):
            nxt = start + j + 1
            if nxt < len(seq.prompt):
                row = self._sampler.logits(self.ctx.ptr, seq.prompt_row + j)
                seq.prompt_lp.append(self._logprobs.record(row, seq.prompt[nxt], k))

    def _with_logprobs(self, seq: Sequence, idx: int, token: int, output: Output) -> Output:
        """The step's output with the sampled token's logprobs (and, first, the prompt's)."""
        k = seq.request.sampling.logprobs
        if (k is None and seq.prompt_lp is None) or not isinstance(output, Delta):
            return output
        extra = {}
        if k is not None and not (self.model.is_eog(token) and output.finish_reason is FinishReason.STOP):
            extra["logprobs"] = (self._logprobs.record(self._sampler.logits(self.ctx.ptr, idx), token, k),)
        if seq.prompt_lp is not None:
            extra["prompt_logprobs"], seq.prompt_lp = tuple(seq.prompt_lp), None
        return dataclasses.replace(output, **extra)

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
        cached = seq.n_cached if seq.cached_at_start is None else seq.cached_at_start
        return Usage(len(seq.prompt) - seq.n_resumed, len(seq.generated) + seq.n_resumed + extra, cached)

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

    # -- low priority: background sequences (batch lines) yield their slots to live requests -----------
    def _admissible(self) -> list[Sequence]:
        """The waiting requests in the order they may be admitted: live ones first, in arrival
        order; background ones (lowest priority value first) only while no live request is about
        (see ``_yield_to_live``)."""
        live = [seq for seq in self._waiting if seq.request.priority == PRIORITY_LIVE]
        if live or time.monotonic() - self._live_seen < LIVE_LINGER_S:
            return live
        return sorted(self._waiting, key=lambda s: s.request.priority)

    def _yield_to_live(self) -> None:
        """Background sequences run only on what live traffic leaves. On a CPU every sequence in a
        step slows the step for all (a step of 8 costs ~3x a step of 2), so while a live request
        waits or runs, every background sequence is paused: a live request waits at most this
        one step behind batch work and streams as fast as on an idle server. Batch work resumes
        ``LIVE_LINGER_S`` after the last live request, and keeps every slot busy while idle."""
        live = any(seq.request.priority == PRIORITY_LIVE for seq in self._waiting) or any(
            slot.seq is not None and slot.seq.request.priority == PRIORITY_LIVE for slot in self.slots)
        if not live:
            return
        self._live_seen = time.monotonic()
        for slot in self.slots:
            if slot.seq is not None and slot.seq.request.priority > PRIORITY_LIVE:
                self._pause(slot)

    def _pause(self, slot: Slot) -> None:
        """Takes a sequence off its slot and queues it again, its prompt now the original prompt plus
        the tokens generated so far (the last one sampled and streamed but not decoded yet). The
        slot's KV keeps that prefix (prefix reuse makes the resume cheap if the slot is still
        free), and the sequence keeps its sampler and decoder: its stream continues seamlessly."""
        seq = slot.seq
        slot.seq, seq.slot = None, None
        self.kv.touch(slot)
        self.kv.reserved -= seq.to_prefill
        if seq.cached_at_start is None:
            seq.cached_at_start = seq.n_cached
        done = tuple(seq.generated)
        sampling = seq.request.sampling
        if sampling.max_tokens is not None:
            sampling = dataclasses.replace(sampling, max_tokens=sampling.max_tokens - len(done))
        seq.request = dataclasses.replace(seq.request, prompt_tokens=seq.request.prompt_tokens + done,
                                          sampling=sampling)
        seq.n_resumed += len(done)
        seq.generated = []
        seq.pending = None
        with self._cv:
            self.n_running -= 1
            self.n_waiting += 1
        self._waiting.append(seq)
        logger.debug("paused background request %s after %d tokens", seq.request.request_id, seq.n_resumed)

    def _fail_running(self, error: LLMServeError) -> list[tuple[Sequence, Output]]:
        out: list[tuple[Sequence, Output]] = []
        for slot in self.slots:
            if slot.seq is not None:
                out.append((slot.seq, error))
                self._release(slot)
                self.kv.clear(slot)
        return out
