"""llmserve's ledger of llama.cpp's KV cells: which sequence holds which cells, shared prefixes,
and least-recently-used eviction of cached-but-idle prefixes.

On a unified cache (one buffer for every sequence, ``kv_unified``) a cell may belong to several
sequences at once: ``llama_memory_seq_cp`` adds a sequence to the cells of another's prefix
instead of copying data, and a cell is free again when its last sequence lets go of it. The
ledger mirrors exactly that: every cell written gets an id, each slot lists the ids of its
positions, a cell's reference count is the number of slots holding it. ``used`` is then the
number of cells llama.cpp has occupied, so the scheduler can admit, grow and evict without ever
asking llama.cpp for a cell it does not have.

On a split cache (``--kv-split``: each slot its own ``n_ctx / n_parallel`` stream, llama.cpp's
default before ``kv_unified``) a slot's capacity is its stream, and a prefix moves between slots
only as a whole-stream copy (see ``Ledger.share``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence as Tokens
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as ll

from llmserve.engines.llamacpp.model import LlamaContext

# a cross-stream copy (split cache only) moves a whole stream: worth it for this many tokens or more
MIN_STREAM_COPY = 16


@dataclass(eq=False)
class Slot:
    """One llama.cpp sequence id: the tokens its KV holds, their cell ids, the request using it."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    cells: list[int] = field(default_factory=list)
    seq: Any = None  # the running scheduler Sequence, or None when idle (its KV stays cached)
    last_used: float = 0.0
    adapter: Any = None  # the LoRA adapter its KV was computed under (None: the base model)


def common_prefix(a: Tokens[int], b: Tokens[int]) -> int:
    """Length of the common prefix of two token sequences (compares in slices, C speed)."""
    n = min(len(a), len(b))
    lo = 0
    step = 256
    while lo < n:  # gallop in slices, then narrow the first unequal slice down
        hi = min(n, lo + step)
        if list(a[lo:hi]) != list(b[lo:hi]):
            while lo < hi and a[lo] == b[lo]:
                lo += 1
            return lo
        lo = hi
    return n


class Ledger:
    """The slots, the cell ids they hold, and the cells promised to prompts still prefilling."""

    def __init__(self, ctx: LlamaContext, n_slots: int, *, unified: bool):
        self.ctx = ctx
        self.unified = unified
        self.capacity = ctx.n_ctx if unified else ctx.n_ctx_seq  # per slot when split
        self.slots = [Slot(i) for i in range(n_slots)]
        self.used = 0  # distinct cells held (unified)
        self.reserved = 0  # cells promised to admitted prompts not yet prefilled
        self._refs: dict[int, int] = {}
        self._next_id = 0
        self._copied: set[int] = set()  # split cache: slots whose stream copy lands at the next decode

    # -- what is free --------------------------------------------------------------------------
    @property
    def free(self) -> int:
        """Cells no sequence holds and no prefill was promised (unified cache)."""
        return self.capacity - self.used - self.reserved

    def room(self, slot: Slot) -> int:
        """Cells ``slot`` may still add: shared free cells (unified) or its own stream's (split)."""
        return self.free if self.unified else self.capacity - len(slot.tokens) - self._reserved_in(slot)

    @staticmethod
    def _reserved_in(slot: Slot) -> int:
        seq = slot.seq
        return 0 if seq is None else len(seq.prompt) - seq.n_prefilled

    def idle(self) -> list[Slot]:
        """Slots without a request, least recently used first (empty ones first of all)."""
        return sorted((s for s in self.slots if s.seq is None), key=lambda s: (bool(s.tokens), s.last_used))

    def evictable(self, keep: Slot | None = None) -> int:
        """Cells that evicting every idle slot but ``keep`` would free (shared cells stay)."""
        holders = Counter(c for s in self.slots if s.seq is None and s is not keep for c in s.cells)
        return sum(1 for c, n in holders.items() if self._refs[c] == n)

    def make_room(self, need: int, keep: Slot | None = None) -> bool:
        """Evicts idle cached prefixes, least recently used first, until ``need`` cells are free;
        False (nothing evicted) when even all of them would not do."""
        if self.free >= need:
            return True
        if self.free + self.evictable(keep) < need:
            return False
        for slot in self.idle():
            if self.free >= need:
                break
            if slot is not keep and slot.tokens:
                self.truncate(slot, 0)
        return True

    # -- the prefix index ----------------------------------------------------------------------
    def longest_prefix(self, prompt: Tokens[int], adapter: Any = None) -> tuple[Slot | None, int]:
        """The slot (running or idle) whose KV holds the longest prefix of ``prompt``, computed
        under the same LoRA ``adapter`` (KV of another adapter is other numbers)."""
        best, n_best = None, 0
        for slot in self.slots:
            if slot.seq_id in self._copied or slot.adapter is not adapter:
                continue
            n = common_prefix(slot.tokens, prompt)
            if n > n_best or (n == n_best and best is not None and best.seq is not None and slot.seq is None):
                best, n_best = slot, n
        return best, n_best

    # -- changes, mirrored into llama.cpp --------------------------------------------------------
    def truncate(self, slot: Slot, keep: int) -> None:
        """Drops ``slot``'s positions from ``keep`` on; their cells are freed unless shared."""
        if keep >= len(slot.tokens):
            return
        if not self.ctx.seq_rm(slot.seq_id, keep, -1):  # cannot happen for a full-attention cache
            self.ctx.seq_rm(slot.seq_id)
            keep = 0
        for cell in slot.cells[keep:]:
            n = self._refs[cell] - 1
            if n:
                self._refs[cell] = n
            else:
                del self._refs[cell]
                self.used -= 1
        del slot.tokens[keep:]
        del slot.cells[keep:]

    def share(self, src: Slot, dst: Slot, n: int) -> int:
        """Gives empty ``dst`` the first ``n`` positions of ``src``: the same cells on a unified
        cache; on a split cache a whole-stream copy (it lands at the next decode, and is worth it
        only for a long prefix). Returns the positions ``dst`` now holds."""
        assert not dst.tokens and n <= len(src.tokens)
        if n <= 0:
            return 0
        if self.unified:
            ll.llama_memory_seq_cp(self.ctx.memory, src.seq_id, dst.seq_id, 0, n)
        else:
            if n < MIN_STREAM_COPY:
                return 0
            ll.llama_memory_seq_cp(self.ctx.memory, src.seq_id, dst.seq_id, -1, -1)  # -1, -1: whole
            self.ctx.seq_rm(dst.seq_id, n, -1)
            self._copied.add(dst.seq_id)
        self.touch(src)  # a prefix shared is a prefix used
        dst.tokens[:] = src.tokens[:n]
        dst.cells[:] = src.cells[:n] if self.unified else self._new_cells(n)
        if self.unified:
            for cell in dst.cells:
                self._refs[cell] += 1
        return n

    def extend(self, slot: Slot, tokens: Tokens[int]) -> None:
        """``tokens`` were decoded into ``slot``: new cells."""
        slot.tokens.extend(tokens)
        slot.cells.extend(self._new_cells(len(tokens)))

    def decoded(self) -> None:
        """A decode ran: pending stream copies have landed."""
        self._copied.clear()

    def _new_cells(self, n: int) -> list[int]:
        first = self._next_id
        self._next_id += n
        ids = list(range(first, first + n))
        self._refs.update(dict.fromkeys(ids, 1))
        self.used += n
        return ids

    def touch(self, slot: Slot) -> None:
        slot.last_used = time.monotonic()

    def clear(self, slot: Slot) -> None:
        self.truncate(slot, 0)
        self.ctx.seq_rm(slot.seq_id)

    def check(self) -> list[str]:
        """Differences between the ledger and llama.cpp's cache (positions per sequence, used
        cells): empty when they agree. For tests."""
        problems = []
        for slot in self.slots:
            lo = ll.llama_memory_seq_pos_min(self.ctx.memory, slot.seq_id)
            hi = ll.llama_memory_seq_pos_max(self.ctx.memory, slot.seq_id)
            want = (0, len(slot.tokens) - 1) if slot.tokens else (-1, -1)
            if (lo, hi) != want:
                problems.append(f"seq {slot.seq_id}: cache holds positions {lo}..{hi}, ledger {want}")
        if self.unified and self.used != len(self._refs):
            problems.append(f"{self.used} cells counted used, {len(self._refs)} referenced")
        return problems
