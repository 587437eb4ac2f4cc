"""How big the llama.cpp engine's KV cache is and how many sequences decode together.

- ``--ctx-size N``: the KV cache holds N tokens (cells) in all. Unset (0): the model's training
  context, shrunk if needed so the cache takes at most a quarter of the machine's memory.
- Default (unified cache): every request may use up to the whole cache (prompt + completion),
  whatever the others hold; shared prefixes take their cells once.
- ``--parallel N``: how many requests decode together (slots). Unset (0): one slot per
  ``CELLS_PER_SLOT`` cells of cache, between ``MIN_AUTO`` and ``MAX_AUTO``: a slot costs nothing
  but a sequence id until it is used, and a full cache of average chats still has room for all
  of them (32 for the bundled model's 8,192-token context, ~23 KB a cell: 189 MB of cache).
- Unified cache: flash attention on (``--flash-attn auto``), and llama.cpp computes a step in
  micro-batches of fewer than ``FA_TILE_ROWS`` tokens. With llmserve's build (patch ``0002``)
  every query row is attended whole on one thread, in an order-free way (double-precision sums
  after the exact maximum), so one request's numbers (and its greedy or seeded answer) depend
  neither on which cells its keys landed in nor on what else is in the batch. A stock build
  falls back to ggml's kernels, which add in cell order in FP16 and tile 64 rows or more.
- ``--kv-split``: llama-server's layout before ``--kv-unified``: each slot owns
  ``ctx-size / parallel`` cells and a request may use only those (auto parallel: 8).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CELLS_PER_SLOT = 256
MIN_AUTO, MAX_AUTO = 4, 64
SPLIT_AUTO = 8  # --kv-split with auto parallel: the old default
MEMORY_SHARE = 4  # an unset --ctx-size keeps the cache under 1/MEMORY_SHARE of physical memory
FA_TILE_ROWS = 64  # ggml-cpu's GGML_FA_TILE_Q: from this many query rows flash attention is tiled


@dataclass(frozen=True)
class KVPlan:
    n_ctx: int  # cells in the whole cache
    n_parallel: int  # slots (llama.cpp sequence ids)
    unified: bool

    @property
    def per_request(self) -> int:
        """The most tokens (prompt + completion) one request may use."""
        return self.n_ctx if self.unified else self.n_ctx // self.n_parallel

    def flash_attn(self, setting: str) -> str:
        """``auto``: on for the unified cache, off for the split one."""
        if setting != "auto":
            return setting
        return "on" if self.unified else "off"

    def n_ubatch(self, n_batch: int) -> int:
        """llama.cpp's micro-batch: below the tiled flash-attention size on the unified cache."""
        return min(n_batch, FA_TILE_ROWS - 1) if self.unified else n_batch


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def plan(*, ctx_size: int, parallel: int, kv_split: bool, n_ctx_train: int, kv_bytes_per_token: int,
         memory: int | None = None) -> KVPlan:
    n_ctx = ctx_size
    if not n_ctx:
        n_ctx = n_ctx_train
        if memory and kv_bytes_per_token:
            n_ctx = min(n_ctx, memory // MEMORY_SHARE // kv_bytes_per_token)
        n_ctx = max(CELLS_PER_SLOT, n_ctx // CELLS_PER_SLOT * CELLS_PER_SLOT)
    if parallel:
        n_parallel = parallel
    elif kv_split:
        n_parallel = SPLIT_AUTO
    else:
        n_parallel = max(MIN_AUTO, min(MAX_AUTO, n_ctx // CELLS_PER_SLOT))
    return KVPlan(n_ctx=n_ctx, n_parallel=n_parallel, unified=not kv_split)
