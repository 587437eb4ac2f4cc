"""What logprobs and n cost on the bundled model, measured side by side on one server in one run.

  logprobs  --concurrency streams (c=8) of --max-tokens tokens each (ignore_eos, so every
            request generates the same count), with `logprobs: true, top_logprobs: 5` and
            without, in alternating rounds; prints output tok/s of both and their ratio
            (issue 14's target: logprobs cost at most 5 %, a ratio >= 0.95)
  n         one request at a time on a ~--prompt-words-word prompt (~500 tokens), never seen
            before (no cached prefix but the template's), with `n: 4` and `n: 1`; prints TTFT
            p50 of both (for n: 4, until every choice has its first token) and their ratio
            (target <= 1.3x, which needs the prompt prefilled once for the 4 choices)

    .venv/bin/python bench/sampling_bench.py                      # the full run (idle machine)
    .venv/bin/python bench/sampling_bench.py --rounds 1 --max-tokens 16 --trials 1 --prompt-words 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from typing import Any

import aiohttp
from serve_bench import free_port, server

from llmserve.bench.client import first_model, open_session

WORDS = ("harbor lantern river stone market bread letter sailor village mountain garden winter copper "
         "engine signal bridge forest meadow storm candle window orchard island ferry clock mill").split()
STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


def notes(seed: int, words: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return [{"role": "user", "content": f"Here are my notes: {text}\n\nSummarise them in one sentence."}]


async def stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[dict[int, float], int]:
    """Sends one streaming chat request; returns each choice's time to first content and the
    completion tokens the usage chunk reported."""
    t0 = time.perf_counter()
    first: dict[int, float] = {}
    tokens = 0
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with session.post(url + "/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(str(event["error"]))
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices") or ():
                if (choice.get("delta") or {}).get("content") and choice["index"] not in first:
                    first[choice["index"]] = time.perf_counter() - t0
    return first, tokens


async def logprobs_rounds(url: str, args: argparse.Namespace) -> dict[str, float]:
    """Output tok/s with and without logprobs, rounds alternating so that drift hits both."""
    totals = {"plain": [0, 0.0], "logprobs": [0, 0.0]}
    async with open_session(connections=args.concurrency, timeout=900) as session:
        model = await first_model(session, url)
        base = {"model": model, "messages": STORY, "max_tokens": args.max_tokens, "temperature": 1.0,
                "ignore_eos": True}
        await stream(session, url, {**base, "max_tokens": 4})  # warm-up
        for r in range(args.rounds):
            for label in (("plain", "logprobs") if r % 2 == 0 else ("logprobs", "plain")):
                extra = {"logprobs": True, "top_logprobs": 5} if label == "logprobs" else {}
                t0 = time.perf_counter()
                done = await asyncio.gather(*(stream(session, url, {**base, "seed": i, **extra})
                                              for i in range(args.concurrency)))
                totals[label][0] += sum(tokens for _, tokens in done)
                totals[label][1] += time.perf_counter() - t0
    return {label: tokens / seconds for label, (tokens, seconds) in totals.items()}


async def n_trials(url: str, args: argparse.Namespace) -> dict[int, list[float]]:
    """TTFT (until every choice has begun) of n: 4 and n: 1, one request at a time, fresh prompts."""
    ttft: dict[int, list[float]] = {1: [], args.n: []}
    async with open_session(connections=1, timeout=900) as session:
        model = await first_model(session, url)
        await stream(session, url, {"model": model, "messages": notes(-1, 20), "max_tokens": 2})  # warm-up
        seed = 0
        for _ in range(args.trials):
            for n in (args.n, 1):
                seed += 1
                first, _ = await stream(session, url, {"model": model, "messages": notes(seed, args.prompt_words),
                                                       "max_tokens": 2, "temperature": 1.0, "seed": seed, "n": n})
                assert len(first) == n, first
                ttft[n].append(max(first.values()))
    return ttft


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens per request in the logprobs part")
    ap.add_argument("--rounds", type=int, default=4, help="rounds of --concurrency requests, per variant")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--trials", type=int, default=8, help="requests per variant in the n part")
    ap.add_argument("--prompt-words", type=int, default=450, help="~1.1 tokens per word: ~500 tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx-size", type=int, default=16384)
    args = ap.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "llmserve", "serve", "--port", str(port), "--threads", str(args.threads),
           "--parallel", str(args.parallel), "--ctx-size", str(args.ctx_size), "--log-level", "warning"]
    with server("llmserve-sampling", cmd, port, "/health") as (url, _):
        rates = asyncio.run(logprobs_rounds(url, args))
        ttft = asyncio.run(n_trials(url, args))
    print(f"logprobs: c={args.concurrency}, {args.rounds} rounds x {args.max_tokens} tokens per variant, "
          f"{args.threads} threads")
    print(f"  {'without':>10} {'top_logprobs 5':>15} {'ratio':>7}")
    print(f"  {rates['plain']:>6.1f} t/s {rates['logprobs']:>11.1f} t/s {rates['logprobs'] / rates['plain']:>7.3f}")
    p50 = {n: statistics.median(v) * 1000 for n, v in ttft.items()}
    print(f"n: ~{args.prompt_words}-word prompts, {args.trials} requests per variant, one at a time")
    print(f"  {'TTFT n=1':>10} {f'TTFT n={args.n}':>11} {'ratio':>7}")
    print(f"  {p50[1]:>8.0f}ms {p50[args.n]:>9.0f}ms {p50[args.n] / p50[1]:>7.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
