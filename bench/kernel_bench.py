"""llmserve's llama.cpp patch against ggml's stock path, in one process: llama_decode time per step.

The Q4_1 x Q8_1 tiles (patches/llama.cpp) switch off at run time, so both paths run on the same
build, model, context and threads, alternating; each line prints the best of --repeats runs per
path and whether the two gave bit-identical logits.

    .venv/bin/python bench/kernel_bench.py --batch 1,8 --threads 2
"""

from __future__ import annotations

import argparse
import time

import llama_cpp as ll
import numpy as np

from llmserve.engines.llamacpp import kernels
from llmserve.engines.llamacpp.model import LlamaContext, LlamaModel
from llmserve.models import bundled_model_path

PROMPT = "<|im_start|>user\nTell me a story about a dragon, number {}<|im_end|>\n<|im_start|>assistant\n"


def timed_steps(model: LlamaModel, ctx: LlamaContext, batch, n_seq: int, steps: int) -> tuple[float, np.ndarray]:
    """Prefills n_seq prompts, then decodes `steps` tokens for each sequence in one batch per
    step; ms per step and the last step's logits."""
    ll.llama_memory_clear(ll.llama_get_memory(ctx.ptr), True)
    n, pos = 0, []
    for s in range(n_seq):
        toks = model.tokenize(PROMPT.format(s))
        for i, t in enumerate(toks):
            batch.token[n], batch.pos[n], batch.n_seq_id[n], batch.seq_id[n][0] = t, i, 1, s
            batch.logits[n] = False
            n += 1
        pos.append(len(toks))
    batch.n_tokens = n
    assert ll.llama_decode(ctx.ptr, batch) == 0
    spent = 0.0
    for step in range(steps):
        for s in range(n_seq):
            batch.token[s], batch.pos[s], batch.n_seq_id[s], batch.seq_id[s][0] = 1000 + s, pos[s] + step, 1, s
            batch.logits[s] = True
        batch.n_tokens = n_seq
        t0 = time.perf_counter()
        assert ll.llama_decode(ctx.ptr, batch) == 0
        spent += time.perf_counter() - t0
    logits = np.stack([np.ctypeslib.as_array(ll.llama_get_logits_ith(ctx.ptr, i), shape=(model.n_vocab,)).copy()
                       for i in range(n_seq)])
    return spent / steps * 1000, logits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="1,8", help="sequences per decode step, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not kernels.q4_1_tiles_available():
        raise SystemExit("this llama-cpp-python build lacks llmserve's patch (see scripts/build-llama-cpp-python.sh)")
    model = LlamaModel(bundled_model_path())
    sizes = [int(b) for b in args.batch.split(",")]
    ctx = LlamaContext(model, n_ctx=1024 * max(sizes), n_seq=max(sizes), n_batch=512, n_threads=args.threads)
    batch = ll.llama_batch_init(512, 0, 1)
    print(f"bundled Q4_1 model, {args.threads} threads, {args.steps} decode steps per run, best of {args.repeats}")
    try:
        for n_seq in sizes:
            best = {True: float("inf"), False: float("inf")}
            logits = {}
            for _ in range(args.repeats):
                for tiles in (True, False):
                    kernels.set_q4_1_tiles(tiles)
                    ms, logits[tiles] = timed_steps(model, ctx, batch, n_seq, args.steps)
                    best[tiles] = min(best[tiles], ms)
            same = np.array_equal(logits[True], logits[False])
            print(f"  {n_seq} sequences: tiles {best[True]:.1f} ms/step, stock vec_dot {best[False]:.1f} ms/step, "
                  f"{best[False] / best[True]:.2f}x; logits bit-identical: {same}")
    finally:
        kernels.set_q4_1_tiles(True)
        ll.llama_batch_free(batch)
        ctx.close()
        model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
