"""The cost of serving LoRA adapters on the llama.cpp engine, in one run against one server.

llama.cpp applies an adapter to a whole decode, so llmserve decodes each adapter's sequences
(and the base's) as their own sub-batch: a mixed batch costs one decode per adapter in it. Starts
`llmserve serve --lora secret=ADAPTER` once and measures, in rounds that alternate the order:

  mix     4 base + 4 adapter streams at c=8 / 8 base streams at c=8, output tok/s  (target >= 0.8x)
  alone   one adapter request alone / one base request alone, output tok/s         (target >= 0.9x)

Each request is a chat with ``ignore_eos`` and ``--tokens`` output tokens; tok/s = completion
tokens of the scenario / its wall time. ADAPTER defaults to the test suite's LoRA (trained once
with PEFT by tests/lora/train_adapter.py, cached).

    .venv/bin/python bench/lora_bench.py                   # the issue's sizes (idle machine)
    .venv/bin/python bench/lora_bench.py --small           # a quick check that it all works
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from serve_bench import check_idle, free_port, server  # noqa: E402

PROMPTS = ["Tell me about the sea.", "Describe a forest in autumn.", "Explain how bread is made.",
           "Write about a city at night.", "What makes a good friend?", "Describe a mountain climb.",
           "Tell me about the history of clocks.", "Explain why the sky is blue."]


def default_adapter() -> Path:
    import subprocess

    from tests.lora.fixtures import adapter_cache

    out = adapter_cache()
    if not (out / "adapter_model.safetensors").is_file():
        subprocess.run([sys.executable, str(HERE.parent / "tests" / "lora" / "train_adapter.py"), str(out)], check=True)
    return out


async def one(session: aiohttp.ClientSession, url: str, model: str, prompt: str, tokens: int) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "ignore_eos": True, "temperature": 0.7, "seed": 1}
    async with session.post(url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        return (await r.json())["usage"]["completion_tokens"]


async def scenario(session: aiohttp.ClientSession, url: str, models: list[str], tokens: int) -> float:
    """Output tok/s of one request per entry of ``models``, all at once."""
    t0 = time.perf_counter()
    counts = await asyncio.gather(*[one(session, url, m, PROMPTS[i % len(PROMPTS)], tokens) for i, m in enumerate(models)])
    return sum(counts) / (time.perf_counter() - t0)


async def measure(url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    scenarios = {
        "8 base": ["base"] * 8,
        "4 base + 4 adapter": ["base", "secret"] * 4,
        "base alone": ["base"],
        "adapter alone": ["secret"],
    }
    results: dict[str, list[float]] = {name: [] for name in scenarios}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        await scenario(session, url, ["base", "secret"], 8)  # warm-up: both paths, the adapter loaded
        for r in range(args.rounds):
            order = list(scenarios) if r % 2 == 0 else list(reversed(scenarios))
            for name in order:
                results[name].append(await scenario(session, url, scenarios[name], args.tokens))
                print(f"round {r + 1}: {name:<20} {results[name][-1]:7.1f} tok/s", file=sys.stderr)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", type=Path, default=None, help="PEFT adapter dir or GGUF LoRA (default: the tests' one)")
    parser.add_argument("--threads", type=int, default=0, help="llmserve --threads (0: all cores)")
    parser.add_argument("--tokens", type=int, default=128, help="output tokens per request")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a quick check: 16 tokens, 1 round")
    args = parser.parse_args()
    if args.small:
        args.tokens, args.rounds = 16, 1
    adapter = args.adapter or default_adapter()
    port = free_port()
    cmd = [sys.executable, "-m", "llmserve", "serve", "--port", str(port), "--threads", str(args.threads),
           "--served-model-name", "base", "--lora", f"secret={adapter}", "--parallel", "8", "--log-level", "warning"]
    with server("lora", cmd, port, "/health") as (url, pid):
        check_idle([pid])
        results = asyncio.run(measure(url, args))
    med = {name: statistics.median(values) for name, values in results.items()}
    mix = med["4 base + 4 adapter"] / med["8 base"]
    alone = med["adapter alone"] / med["base alone"]
    print(f"\nllama.cpp engine, {args.tokens} output tokens a request, median of {args.rounds} round(s):")
    for name, value in med.items():
        print(f"  {name:<20} {value:7.1f} tok/s")
    print(f"  mix   4 base + 4 adapter / 8 base      {mix:.2f}x  (target >= 0.8x)")
    print(f"  alone adapter / base                   {alone:.2f}x  (target >= 0.9x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
