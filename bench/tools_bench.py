"""What `tool_choice: auto` costs when the model answers in text: output tok/s at concurrency 8.

Every request carries the same tools and a question the model answers without a call. Three
modes run in alternating rounds against one `llmserve serve`, so they share the machine's state:

  auto   tools shown, tool_choice "auto": a lazy grammar armed on "<tool_call>" (free decoding
         until the trigger, which never comes) and the streaming tool-call parser on every delta
  none   the same prompt, tool_choice "none": tools shown, no grammar, no parsing (the baseline)
  plain  no tools at all (a shorter prompt; for information)

It prints output tok/s per mode and auto / none (issue #13's target: >= 0.98), and counts the
answers that called a tool (must be 0 for the figure to mean what it says).

    .venv/bin/python bench/tools_bench.py --rounds 3 --requests 32 --max-tokens 128
    .venv/bin/python bench/tools_bench.py --rounds 1 --requests 8 --max-tokens 16   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from contextlib import ExitStack

import aiohttp
from serve_bench import free_port, server

from llmserve.bench.client import first_model, open_session

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Get the current time in a timezone",
                                      "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}},
                                                     "required": ["timezone"]}}},
]
QUESTIONS = [
    "What is 2+2?", "Write a haiku about the sea.", "Tell me a joke.", "Hello! How are you?",
    "Explain what a noun is.", "Write a short poem about autumn.", "What is the capital of Italy?",
    "Give me three tips for learning to cook.", "What is a prime number?", "Describe a cat in two sentences.",
    "Why is the sky blue?", "Write a limerick about a frog.",
]
MODES = {"auto": {"tools": TOOLS, "tool_choice": "auto"}, "none": {"tools": TOOLS, "tool_choice": "none"},
         "plain": {}}


async def one(session: aiohttp.ClientSession, url: str, model: str, question: str, max_tokens: int,
              extra: dict) -> tuple[int, bool]:
    """Streams one answer: (completion tokens, whether it called a tool)."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, **extra}
    tokens, called = 0, False
    async with session.post(url + "/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        async for line in r.content:
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(str(event["error"]))
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices") or ():
                called = called or bool((choice.get("delta") or {}).get("tool_calls"))
    return tokens, called


async def run_mode(session, url, model, mode: str, requests: int, concurrency: int, max_tokens: int):
    gate = asyncio.Semaphore(concurrency)

    async def task(i: int):
        async with gate:
            return await one(session, url, model, QUESTIONS[i % len(QUESTIONS)], max_tokens, MODES[mode])

    start = time.perf_counter()
    results = await asyncio.gather(*(task(i) for i in range(requests)))
    return sum(t for t, _ in results), time.perf_counter() - start, sum(c for _, c in results)


async def measure(url: str, args) -> dict[str, list[float]]:
    totals = {m: [0, 0.0, 0] for m in args.modes}
    async with open_session(connections=args.concurrency, timeout=1200) as session:
        model = await first_model(session, url)
        for mode in args.modes:  # warm-up: compiles the grammar once, fills the prompt caches
            await run_mode(session, url, model, mode, args.concurrency, args.concurrency, 4)
        for r in range(args.rounds):
            order = args.modes if r % 2 == 0 else list(reversed(args.modes))
            for mode in order:
                tokens, seconds, calls = await run_mode(session, url, model, mode, args.requests,
                                                        args.concurrency, args.max_tokens)
                t = totals[mode]
                t[0] += tokens
                t[1] += seconds
                t[2] += calls
                print(f"  round {r + 1} {mode:5} {tokens:6d} tokens {seconds:7.1f} s {tokens / seconds:8.1f} tok/s",
                      flush=True)
    return totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=32, help="requests per mode and round")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--modes", default="auto,none,plain", help="comma-separated, of auto, none, plain")
    ap.add_argument("--url", help="an llmserve already running (default: start one on the bundled model)")
    args = ap.parse_args()
    args.modes = args.modes.split(",")
    with ExitStack() as stack:
        if args.url:
            url = args.url.rstrip("/")
        else:
            port = free_port()
            cmd = [sys.executable, "-m", "llmserve", "serve", "--port", str(port), "--threads", str(args.threads),
                   "--parallel", str(args.parallel), "--log-level", "warning", "--max-queue", "256"]
            url, _ = stack.enter_context(server("llmserve", cmd, port, "/health"))
        print(f"c={args.concurrency}, {args.requests} requests per mode and round, {args.rounds} rounds, "
              f"max_tokens {args.max_tokens}, greedy")
        totals = asyncio.run(measure(url, args))
    rate = {m: t[0] / t[1] for m, t in totals.items() if t[1]}
    print(f"{'mode':6} {'tokens':>8} {'tok/s':>9} {'tool calls':>10}")
    for m, (tokens, _, calls) in totals.items():
        print(f"{m:6} {tokens:8d} {rate[m]:9.1f} {calls:10d}")
    if "auto" in rate and "none" in rate:
        print(f"auto / none: {rate['auto'] / rate['none']:.3f}x (target >= 0.98)")
    if totals.get("auto", [0, 0, 0])[2]:
        print("note: some auto answers called a tool; the ratio then also counts constrained decoding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
