"""llmserve through Ray Serve (``serve --ray``) against plain ``llmserve serve``, side by side.

Three measurements on the bundled model, each printed as a ratio of two runs made in this run:

  c=1       one request at a time: TTFT p50 and output tok/s through Serve (1 replica) against
            a plain server with the same threads and slots (Serve's cost per request)
  scale     2 replicas of 1 thread driven at c=8, against two plain single-thread servers
            driven at c=4 each at the same time (on 2 cores, the scale-out ceiling)

The servers of a measurement are up together and driven in alternating rounds (--rounds), so the
machine's drift falls on both sides alike.
  cache     the second turn of --conversations conversations over 2 replicas (first turns,
            then second turns, all at once): the share of their prompt tokens served from the
            KV cache (usage.prompt_tokens_details.cached_tokens), which needs the router to send
            each turn to the replica that holds its conversation

    .venv/bin/python bench/ray_bench.py                      # the figures for the README (idle machine)
    .venv/bin/python bench/ray_bench.py --requests 4 --max-tokens 16 --conversations 4   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from contextlib import ExitStack

from prefix_bench import document
from serve_bench import free_port, server

from llmserve.bench.client import RequestResult, first_model, open_session, stream_chat

PROMPTS = ("Write a long story about a lighthouse keeper.", "Explain how bread is made, step by step.",
           "Describe a journey across a desert.", "Tell a fairy tale about a fox and a crow.")


def command(port: int, threads: int, parallel: int, ctx: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "llmserve", "serve", "--port", str(port), "--threads", str(threads),
            "--parallel", str(parallel), "--ctx-size", str(ctx), "--log-level", "warning", *extra]


async def drive(url: str, concurrency: int, requests: int, max_tokens: int) -> tuple[list[RequestResult], float]:
    """``requests`` streamed completions (ignore_eos: every one is ``max_tokens`` long), ``concurrency`` at once."""
    async with open_session(connections=concurrency, timeout=900) as session:
        model = await first_model(session, url)
        queue = list(range(requests))
        results: list[RequestResult] = []

        async def worker():
            while queue:
                i = queue.pop()
                r = await stream_chat(session, url, model=model, max_tokens=max_tokens,
                                      messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                      extra_body={"ignore_eos": True})
                if not r.ok:
                    raise RuntimeError(f"{url}: {r.error}")
                results.append(r)

        await stream_chat(session, url, model=model, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - t0


def tok_s(results: list[RequestResult], seconds: float) -> float:
    return sum(r.output_tokens for r in results) / seconds


def per_stream_tok_s(results: list[RequestResult]) -> float:
    return statistics.median(r.output_tokens / (r.latency - r.ttft) for r in results if r.ttft and r.latency > r.ttft)


async def conversations(url: str, n: int, words: int) -> tuple[int, int]:
    """Prompt tokens and cached prompt tokens of the second turns of ``n`` conversations."""
    async with open_session(connections=n, timeout=900) as session:
        model = await first_model(session, url)
        firsts = [[{"role": "user", "content": f"My notes:\n{document(i, words)}\n\nSummarize them."}] for i in range(n)]

        async def send(messages):
            r = await stream_chat(session, url, model=model, messages=messages, max_tokens=16)
            if not r.ok:
                raise RuntimeError(f"{url}: {r.error}")
            return r

        await asyncio.gather(*(send(m) for m in firsts))
        answer = "They are notes about a harbor town."  # the same assistant turn for every history
        seconds = await asyncio.gather(*(send(m + [{"role": "assistant", "content": answer},
                                                   {"role": "user", "content": "Which word comes up most?"}])
                                         for m in firsts))
    return sum(r.prompt_tokens or 0 for r in seconds), sum(r.cached_tokens or 0 for r in seconds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=24, help="requests per server for the c=1 and scale measurements (over all rounds)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--parallel", type=int, default=8, help="slots per server or replica")
    ap.add_argument("--ctx-size", type=int, default=16384)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--history-words", type=int, default=300)
    ap.add_argument("--stream-interval", type=float, default=None, help="--ray-stream-interval of the Ray servers (default: llmserve's)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of the c=1 and scale measurements")
    ap.add_argument("--only", default="c1,scale,cache")
    args = ap.parse_args()
    only = args.only.split(",")
    p, ctx, n, mt = args.parallel, args.ctx_size, args.requests, args.max_tokens
    ray_flags = ("--ray",) + (("--ray-stream-interval", str(args.stream_interval)) if args.stream_interval is not None else ())

    if "c1" in only:
        # both up at once, measured in alternating rounds: the machine's drift hits both alike
        with ExitStack() as stack:
            urls = {}
            for label, extra in (("plain", ()), ("ray", (*ray_flags, "--replicas", "1"))):
                port = free_port()
                urls[label] = stack.enter_context(server(f"ray-bench-{label}", command(port, 1, p, ctx, *extra),
                                                         port, "/health"))[0]
            got: dict[str, list[RequestResult]] = {"plain": [], "ray": []}
            for _ in range(args.rounds):
                for label, url in urls.items():
                    got[label] += asyncio.run(drive(url, 1, max(1, n // args.rounds), mt))[0]
        ttft = {k: statistics.median(r.ttft for r in v) * 1000 for k, v in got.items()}
        rate = {k: per_stream_tok_s(v) for k, v in got.items()}
        print(f"c=1, 1 thread, {len(got['ray'])} requests of {mt} tokens each, {args.rounds} alternating rounds")
        print(f"  TTFT p50   plain {ttft['plain']:.1f} ms   ray {ttft['ray']:.1f} ms   ray - plain {ttft['ray'] - ttft['plain']:+.1f} ms")
        print(f"  tok/s      plain {rate['plain']:.1f}   ray {rate['ray']:.1f}   ray / plain {rate['ray'] / rate['plain']:.3f}x")

    if "scale" in only:
        with ExitStack() as stack:
            bare = []
            for i in range(2):
                port = free_port()
                bare.append(stack.enter_context(server(f"ray-bench-bare{i}", command(port, 1, p, ctx), port,
                                                       "/health"))[0])
            port = free_port()
            ray_url = stack.enter_context(server("ray-bench-2x", command(port, 1, p, ctx, *ray_flags, "--replicas", "2"),
                                                 port, "/health"))[0]

            async def both():
                return await asyncio.gather(*(drive(u, 4, max(1, n // args.rounds // 2), mt) for u in bare))

            bare_rates, ray_rates = [], []
            for _ in range(args.rounds):
                bare_rates.append(sum(tok_s(r, s) for r, s in asyncio.run(both())))
                ray_rates.append(tok_s(*asyncio.run(drive(ray_url, 8, max(1, n // args.rounds), mt))))
        bare_rate, ray_rate = statistics.median(bare_rates), statistics.median(ray_rates)
        print(f"scale: {args.rounds} alternating rounds of {max(1, n // args.rounds)} requests of {mt} tokens (median)")
        print(f"  2 bare 1-thread servers at c=4 each {bare_rate:.1f} tok/s   2 replicas x 1 thread at c=8 "
              f"{ray_rate:.1f} tok/s   ray / bare {ray_rate / bare_rate:.3f}x")

    if "cache" in only:
        port = free_port()
        with server("ray-bench-cache", command(port, 1, p, ctx, *ray_flags, "--replicas", "2"), port, "/health") as (url, _):
            prompt, cached = asyncio.run(conversations(url, args.conversations, args.history_words))
        print(f"cache: second turns of {args.conversations} conversations over 2 replicas: {cached} of {prompt} "
              f"prompt tokens from the KV cache ({100 * cached / max(prompt, 1):.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
