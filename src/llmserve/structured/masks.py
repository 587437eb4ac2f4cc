"""A step's token masks for a batch, computed while the model runs.

``start`` hands the active guides of the coming step to one helper thread, which fills their
bitmask rows (llguidance releases the GIL) and unpacks them into boolean "forbidden" rows; the
caller runs the model meanwhile (``llama_decode`` and torch release the GIL too) and then
``wait``s, which is usually free. Applying a row to the logits is then one masked copy.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Sequence

import numpy as np

from llmserve.structured.guide import Guide


def apply_bitmask(logits: np.ndarray, forbidden: np.ndarray) -> None:
    """Forbidden tokens get -inf IN PLACE, so everything that reads these logits later (the
    sampler chain, logprobs) sees the masked values."""
    np.copyto(logits, np.float32(-np.inf), where=forbidden)


class MaskBatch:
    """Owned by one decode thread; ``n_rows`` is the most sequences one step samples."""

    def __init__(self, n_rows: int, n_vocab: int):
        self.n_vocab = n_vocab
        self._bits = np.full((n_rows, (n_vocab + 31) // 32), -1, dtype=np.int32)
        self._forbidden = np.zeros((n_rows, n_vocab), dtype=bool)
        self._pool: ThreadPoolExecutor | None = None
        self._job: Future | None = None

    def start(self, rows: Sequence[tuple[Guide, int]]) -> None:
        """Begin filling ``rows`` (guide, row): only active guides are given."""
        if not rows:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmserve-masks")
        self._job = self._pool.submit(self._fill, list(rows))

    def _fill(self, rows: list[tuple[Guide, int]]) -> None:
        backend = rows[0][0].backend
        backend.fill_bitmasks([(g.matcher, row) for g, row in rows], self._bits)
        for _, row in rows:
            bits = np.unpackbits(self._bits[row].view(np.uint8), bitorder="little", count=self.n_vocab)
            np.equal(bits, 0, out=self._forbidden[row])

    def wait(self) -> np.ndarray:
        """The forbidden-token rows of the step that ``start`` began (raises what the fill raised)."""
        job, self._job = self._job, None
        if job is not None:
            job.result()
        return self._forbidden

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
