"""vLLM engine throughput through llmserve: c concurrent streams of max_tokens tokens.

    .venv-vllm/bin/python bench/vllm_bench.py --concurrency 8 --max-tokens 128
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


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF file or HF directory (default: bundled SmolLM2)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()

    from llmserve.chat_model import AsyncChatModel

    t0 = time.perf_counter()
    chat = AsyncChatModel(args.model, engine="vllm", parallel=args.concurrency, ctx_size=2048)
    await chat.start()
    ready = time.perf_counter() - t0
    sem = asyncio.Semaphore(args.concurrency)

    async def one(text: str) -> int:
        async with sem:
            return (await chat.achat(text, temperature=0, max_tokens=args.max_tokens)).usage.completion_tokens

    try:
        paris = (await chat.achat("What is the capital of France? Answer in one word.", temperature=0)).text
        t = time.perf_counter()
        counts = await asyncio.gather(*(one(PROMPTS[i % len(PROMPTS)]) for i in range(args.requests)))
        wall = time.perf_counter() - t
    finally:
        await chat.aclose()
    print(f"ready in {ready:.1f} s; greedy France answer: {paris!r}")
    print(f"{args.requests} requests at c={args.concurrency}: {sum(counts)} tokens in {wall:.1f} s = "
          f"{sum(counts) / wall:.1f} tok/s")


if __name__ == "__main__":
    asyncio.run(main())
