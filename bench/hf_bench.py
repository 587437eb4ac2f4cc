"""HF engine throughput vs the naive approach, side by side in one run.

Naive: one ``model.generate()`` at a time behind a lock (as LLaMA-Factory's HF engine does),
concurrent clients queue on the lock. Ours: ``AsyncChatModel(engine="hf")``, whose worker
thread batches the concurrent requests. Same model object, dtype, prompts and token budget.

    .venv/bin/python bench/hf_bench.py --concurrency 8 --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import time

PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy market in a big city.",
    "Write a long letter to a friend about your summer holidays.",
    "Explain why the sky is blue, step by step.",
    "Write a detailed recipe for a chocolate cake.",
    "Describe the life cycle of a butterfly in detail.",
    "Tell me about the history of the bicycle.",
]


async def run_naive(model, tokenizer, prompts: list[str], concurrency: int, max_tokens: int) -> tuple[int, float]:
    import torch

    lock = asyncio.Lock()
    sem = asyncio.Semaphore(concurrency)

    def generate_one(text: str) -> int:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)
        return out.shape[1] - ids.shape[1]

    async def one(text: str) -> int:
        async with sem, lock:
            return await asyncio.to_thread(generate_one, text)

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in prompts))
    return sum(counts), time.perf_counter() - t0


async def run_engine(chat, prompts: list[str], concurrency: int, max_tokens: int) -> tuple[int, float]:
    sem = asyncio.Semaphore(concurrency)

    async def one(text: str) -> int:
        async with sem:
            c = await chat.achat(text, temperature=0, max_tokens=max_tokens)
            return c.usage.completion_tokens

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one(p) for p in prompts))
    return sum(counts), time.perf_counter() - t0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF file or HF directory (default: bundled SmolLM2)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()

    import torch

    from llmserve.chat_model import AsyncChatModel

    torch.set_num_threads(args.threads)
    chat = AsyncChatModel(args.model, engine="hf", parallel=args.concurrency, threads=args.threads,
                          options={"dtype": args.dtype})
    await chat.start()
    try:
        loaded = chat.engine.loaded
        prompts = [chat.render(PROMPTS[i % len(PROMPTS)]) for i in range(args.requests)]
        await run_engine(chat, prompts[:1], 1, 4)  # warm-up
        n_naive, t_naive = await run_naive(loaded.model, loaded.tokenizer, prompts, args.concurrency, args.max_tokens)
        n_ours, t_ours = await run_engine(chat, prompts, args.concurrency, args.max_tokens)
    finally:
        await chat.aclose()
    naive, ours = n_naive / t_naive, n_ours / t_ours
    print(f"model {chat.name}, dtype {args.dtype}, {args.threads} threads, {args.requests} requests at c={args.concurrency}, "
          f"max_tokens {args.max_tokens}")
    print(f"naive (generate() behind a lock): {n_naive} tokens in {t_naive:.1f} s = {naive:.1f} tok/s")
    print(f"llmserve hf engine (batched):     {n_ours} tokens in {t_ours:.1f} s = {ours:.1f} tok/s")
    print(f"ratio: {ours / naive:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
