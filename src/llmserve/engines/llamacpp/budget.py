"""How many prompt tokens one engine step may prefill while other sequences are decoding.

A step decodes one token for every running stream plus a chunk of pending prompts; the chunk
decides how much a long prompt slows the streams beside it. The budget is measured, not guessed:
it keeps the running averages of a decode-only step and of the extra time one prefilled token
adds, and sizes the chunk so that a mixed step costs about ``SLOWDOWN`` times a decode-only one
(a 6,000-token prompt then arrives in small chunks while the streams keep ~2/3 of their pace).
Late in a long prompt one token costs the most (it attends to every token before it: ~13 ms at
6,000 tokens on 2 Zen 4 cores, half a decode step of 7 streams), so a chunk may shrink to a single
token rather than stall the streams. With nothing decoding, a step prefills as much as the batch
holds.
"""

from __future__ import annotations

SLOWDOWN = 1.6  # a mixed step may cost this many decode-only steps (issue: ITL at most 2x)
MIN_CHUNK = 1  # never starve a prompt entirely
# a mixed step may always spend this long on prefill: beside a single stream (a 6 ms step) 1.6x
# would leave a long prompt a few tokens a step and minutes of TTFT for a few ms of that stream's ITL
MIN_EXTRA_S = 0.010
FIRST_CHUNK = 32  # until both costs have been measured
_ALPHA = 0.2  # weight of the newest measurement in the running averages


class PrefillBudget:
    def __init__(self, n_batch: int):
        self.n_batch = n_batch
        self.decode_s: float | None = None  # a decode-only step, per decoding sequence
        self.per_token_s: float | None = None  # what one prefilled token adds to a step

    def tokens(self, n_decoding: int) -> int:
        """The prefill tokens the next step may take beside ``n_decoding`` decoding sequences."""
        room = self.n_batch - n_decoding
        if n_decoding == 0:
            return room
        if self.decode_s is None or not self.per_token_s:
            return max(0, min(room, FIRST_CHUNK))
        extra = max((SLOWDOWN - 1.0) * self.decode_s * n_decoding, MIN_EXTRA_S)
        chunk = int(extra / self.per_token_s)
        return max(0, min(room, max(MIN_CHUNK, chunk)))

    def record(self, n_decoding: int, n_prefill: int, seconds: float) -> None:
        """One step's make-up and how long its decode took."""
        if n_decoding == 0:
            return
        if n_prefill == 0:
            self.decode_s = _avg(self.decode_s, seconds / n_decoding)
        elif self.decode_s is not None:
            extra = max(seconds - self.decode_s * n_decoding, 0.0)
            self.per_token_s = _avg(self.per_token_s, extra / n_prefill)


def _avg(old: float | None, new: float) -> float:
    return new if old is None else (1 - _ALPHA) * old + _ALPHA * new
