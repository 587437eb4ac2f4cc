"""The Q4_1 kernel per batch size: the measured table decides, and the patch obeys the mask."""

from __future__ import annotations

import json

from llmserve.engines.llamacpp import dispatch, kernels
# the bundled model, a one-thread context and the tiles switched back on after each test: as there
from tests.model.test_q4_1_tiles import ctx, decode_logits, model, tiles_restored  # noqa: F401


def test_mask_follows_the_faster_kernel_per_rung():
    # vec_dot faster at 1 and 2 sequences, tiles from 3 on; 64 (prefill-sized) tiles too
    timings = {1: (9.0, 7.7), 2: (11.0, 10.0), 3: (12.0, 14.0), 8: (28.0, 38.0), 64: (50.0, 90.0)}
    mask = dispatch.mask_from(timings)
    assert not mask & 1 and not mask >> 1 & 1  # n = 1, 2: vec_dot
    assert all(mask >> (n - 1) & 1 for n in range(3, 65))  # 3..7 follow rung 3, 8..63 rung 8, 64 itself
    # a tie goes to the tiles; a size past the ladder follows its last rung
    assert dispatch.mask_from({1: (5.0, 5.0)}) == (1 << 64) - 1
    assert dispatch.mask_from({1: (5.0, 4.0), 4: (6.0, 5.0)}) == 0


def tile_calls_during(model, ctx, n_seq: int) -> int:
    before = kernels.q4_1_tile_calls()
    decode_logits(model, ctx, n_seq, steps=2)
    return kernels.q4_1_tile_calls() - before


def test_the_patch_runs_vec_dot_where_the_mask_says_so(model, ctx, tiles_restored):
    # bit 0 clear: a one-sequence decode step goes to vec_dot; 8 sequences (and the prefill of
    # one prompt, n >= 5 tokens) still use the tiles
    assert kernels.set_q4_1_columns(~1)
    prefill_only = tile_calls_during(model, ctx, 1)
    assert kernels.set_q4_1_tiles(True)
    with_decode = tile_calls_during(model, ctx, 1)
    assert prefill_only > 0 and with_decode >= prefill_only + 2 * 30 * 7  # 2 decode calls x 30 layers x 7 matmuls
    assert kernels.set_q4_1_columns(~1)
    assert tile_calls_during(model, ctx, 8) >= 3 * 30 * 7  # prefill + 2 decode calls of 8 columns


def test_configure_takes_the_cached_table_for_this_cpu(model, bundled_path, ctx, tmp_path, tiles_restored):
    # a table that says vec_dot wins at one sequence: configure() must set the mask from it
    # (no measuring: the cache answers), and a one-sequence decode then skips the tiles
    key = dispatch.cache_key(str(bundled_path), 1)
    timings = {"1": [9.0, 7.7], "2": [10.0, 12.0], "64": [40.0, 80.0]}
    (tmp_path / f"q4_1-{key}.json").write_text(json.dumps({"timings": timings}))
    dispatch.configure(model, str(bundled_path), 1, "auto", tmp_path)
    one = tile_calls_during(model, ctx, 1)
    kernels.set_q4_1_tiles(True)
    assert tile_calls_during(model, ctx, 1) >= one + 2 * 30 * 7


def test_measure_times_both_kernels(model):
    timings = dispatch.measure(model, 1, sizes=(1, 4), steps=1, repeats=1)
    assert set(timings) == {1, 4}
    assert all(t > 0 for pair in timings.values() for t in pair)
    assert kernels.q4_1_tile_calls() >= 0
