"""The running batch's KV cache: left-padded rows that can be dropped, trimmed and merged.

Rows are left-padded: every row's real tokens end at the last column, and ``mask`` marks which
columns are real. RoPE is applied before keys are cached, so a row's keys do not depend on the
column they sit in; moving a row (padding it further left, or trimming shared padding) leaves
its attention unchanged as long as ``position_ids`` stay the row's true positions.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def new_cache(config) -> DynamicCache:
    return DynamicCache(config=config)


def mergeable(cache: DynamicCache) -> bool:
    """Only plain full-attention layers can be re-padded and concatenated safely."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class KVBatch:
    """KV cache plus attention mask of the sequences being decoded together."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor):
        self.cache = cache
        self.mask = mask  # [rows, columns], 1 for real tokens

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def positions(self) -> torch.Tensor:
        """Position of the next token of every row: its count of real cached tokens."""
        return self.mask.sum(-1, keepdim=True)

    def grow(self) -> None:
        """One more real column for every row (before a decode step)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], dim=1)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order), then drop the padding columns no row needs."""
        index = torch.tensor(rows, dtype=torch.long)
        self.mask = self.mask[index]
        for layer in self.cache.layers:
            if layer.is_initialized and layer.keys.numel():
                layer.keys = layer.keys[index]
                layer.values = layer.values[index]
        self._trim()

    def _trim(self) -> None:
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else self.mask.shape[1]
        if start == 0:
            return
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            if layer.is_initialized and layer.keys.numel():
                layer.keys = layer.keys[..., start:, :]
                layer.values = layer.values[..., start:, :]

    def extend(self, other: KVBatch) -> None:
        """Append ``other``'s rows after ours, left-padding whichever is shorter."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)], dim=0)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width, 2), _pad_left(theirs.keys, width, 2)], dim=0)
            mine.values = torch.cat([_pad_left(mine.values, width, 2), _pad_left(theirs.values, width, 2)], dim=0)


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
