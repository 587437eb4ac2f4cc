"""llmserve's llama.cpp patch against ggml's stock path, in one process: llama_decode time per step.

The Q4_1 x Q8_1 tiles (patches/llama.cpp) switch per batch size at run time, so every path runs on
the same build, model, context and threads, alternating: the tiles alone, ggml's stock vec_dot, and
what the engine runs ("dispatch": the faster of the two per batch size, as measured on this CPU by
``engines/llamacpp/dispatch.py`` and cached). Each line prints the best of --repeats runs per path
and whether the paths gave bit-identical logits; dispatch / stock must be >= 1.0x at every size.

    .venv/bin/python bench/kernel_bench.py --batch 1,2,3,4,6,8,12,16,24,32 --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import llama_cpp as ll
import numpy as np

from llmserve.bench import report
from llmserve.engines.llamacpp import dispatch, kernels
from llmserve.engines.llamacpp.model import LlamaContext, LlamaModel
from llmserve.models import bundled_model_path

KERNEL_CACHE = Path.home() / ".cache" / "llmserve" / "kernels"
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
    ap.add_argument("--batch", default="1,2,3,4,6,8,12,16,24,32", help="sequences per decode step, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not kernels.q4_1_tiles_available():
        raise SystemExit("this llama-cpp-python build lacks llmserve's patch (see scripts/build-llama-cpp-python.sh)")
    path = str(bundled_model_path())
    model = LlamaModel(path)
    sizes = [int(b) for b in args.batch.split(",")]
    # the engine's choice: measured once per CPU, model and thread count (cached), as at start-up
    dispatch.configure(model, path, args.threads, "auto", KERNEL_CACHE)
    table = dispatch.mask_from(dispatch.load(path, args.threads, KERNEL_CACHE))
    ctx = LlamaContext(model, n_ctx=1024 * max(sizes), n_seq=max(sizes), n_batch=512, n_threads=args.threads)
    batch = ll.llama_batch_init(512, 0, 1)
    print(report.machine())
    print(f"bundled Q4_1 model, {args.threads} threads, {args.steps} decode steps per run, "
          f"best of {args.repeats}")
    paths = {"tiles": (1 << 64) - 1, "stock": 0, "dispatch": table}
    try:
        for n_seq in sizes:
            best = {name: float("inf") for name in paths}
            logits = {}
            for _ in range(args.repeats):
                for name, mask in paths.items():
                    kernels.set_q4_1_columns(mask)
                    ms, logits[name] = timed_steps(model, ctx, batch, n_seq, args.steps)
                    best[name] = min(best[name], ms)
            same = all(np.array_equal(logits["stock"], other) for other in logits.values())
            chosen = "tiles" if table >> (min(n_seq, 64) - 1) & 1 else "vec_dot"
            print(f"  {n_seq:2d} sequences: tiles {best['tiles']:6.1f} ms/step, stock vec_dot {best['stock']:6.1f}, "
                  f"dispatch ({chosen}) {best['dispatch']:6.1f}: dispatch / stock {best['stock'] / best['dispatch']:.2f}x, "
                  f"tiles / stock {best['stock'] / best['tiles']:.2f}x; logits bit-identical: {same}")
    finally:
        kernels.set_q4_1_tiles(True)
        ll.llama_batch_free(batch)
        ctx.close()
        model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
