"""Batch jobs on the bundled model: throughput on an idle server, and what a running batch costs
live traffic. One llmserve server (--threads, --parallel slots), in one run:

  serve c=8   streamed chat, 8 in flight (the serving bench's load: 128 new tokens, ignore_eos)
  batch idle  a --lines batch of the same requests (128 new tokens each) on the idle server:
              output tok/s from the batch's creation to its completion
  live idle   streamed chat at c=2 on the idle server: TTFT p50 and output tok/s
  live+batch  the same live load while a batch fills every slot (batch lines yield their slots
              to live requests within one engine step)

and prints the ratios issue #16 asks for: batch / serve c=8 tok/s (>= 0.9x), live TTFT p50 with
the batch / idle (<= 1.5x), live tok/s with the batch / idle (>= 0.8x).

    .venv/bin/python bench/batch_bench.py --lines 256 --live-requests 16      # the full run
    .venv/bin/python bench/batch_bench.py --lines 16 --live-requests 4 --max-tokens 32   # quick check
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time

import aiohttp

from serve_bench import PROMPTS, check_idle, free_port, server

from llmserve.bench.client import first_model, open_session, stream_chat
from llmserve.bench.runner import Target, drive, summarize


def batch_lines(model: str, n: int, max_tokens: int) -> bytes:
    return "".join(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": max_tokens, "temperature": 0.7, "ignore_eos": True}}) + "\n" for i in range(n)).encode()


async def create_batch(session: aiohttp.ClientSession, url: str, data: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", data, filename="bench.jsonl", content_type="application/jsonl")
    async with session.post(url + "/v1/files", data=form) as r:
        file_id = (await r.json())["id"]
    async with session.post(url + "/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                                        "completion_window": "24h"}) as r:
        return (await r.json())["id"]


async def batch_state(session: aiohttp.ClientSession, url: str, batch_id: str) -> dict:
    async with session.get(f"{url}/v1/batches/{batch_id}") as r:
        return await r.json()


async def run_batch(session: aiohttp.ClientSession, url: str, model: str, n: int, max_tokens: int) -> tuple[float, int]:
    """(seconds, output tokens) of a whole batch on the idle server."""
    t0 = time.perf_counter()
    batch_id = await create_batch(session, url, batch_lines(model, n, max_tokens))
    while (state := await batch_state(session, url, batch_id))["status"] not in ("completed", "failed", "cancelled"):
        await asyncio.sleep(0.1)
    elapsed = time.perf_counter() - t0
    async with session.get(f"{url}/v1/files/{state['output_file_id']}/content") as r:
        rows = [json.loads(x) for x in (await r.text()).splitlines()]
    tokens = sum(row["response"]["body"]["usage"]["completion_tokens"] for row in rows)
    if state["request_counts"]["failed"]:
        print(f"warning: {state['request_counts']['failed']} batch lines failed", file=sys.stderr)
    return elapsed, tokens


async def live(session: aiohttp.ClientSession, url: str, model: str, concurrency: int, n: int, max_tokens: int):
    def send(i: int):
        return stream_chat(session, url, model=model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                           max_tokens=max_tokens, temperature=0.7, extra_body={"ignore_eos": True})

    results, duration = await drive(send, n, concurrency)
    return summarize(Target("llmserve", url), model, concurrency, results, duration)


async def bench(args: argparse.Namespace, url: str) -> None:
    async with open_session(connections=16, timeout=3600) as session:
        model = await first_model(session, url)
        await live(session, url, model, 2, 2, 16)  # warm-up
        serve8 = await live(session, url, model, 8, args.serve_requests, args.max_tokens)
        print(f"serve c=8: {serve8.output_tok_s:.1f} tok/s ({serve8.errors} errors)")
        seconds, tokens = await run_batch(session, url, model, args.lines, args.max_tokens)
        batch_tok_s = tokens / seconds
        print(f"batch idle: {args.lines} lines, {tokens} tokens in {seconds:.1f} s: {batch_tok_s:.1f} tok/s")
        idle = await live(session, url, model, 2, args.live_requests, args.max_tokens)
        print(f"live c=2 idle: TTFT p50 {idle.ttft_p50_ms:.0f} ms, {idle.output_tok_s:.1f} tok/s")
        batch_id = await create_batch(session, url, batch_lines(model, max(args.lines, 64), args.max_tokens))
        while (await batch_state(session, url, batch_id))["request_counts"]["completed"] < 1:
            await asyncio.sleep(0.1)  # the batch fills every slot
        busy = await live(session, url, model, 2, args.live_requests, args.max_tokens)
        state = await batch_state(session, url, batch_id)
        async with session.post(f"{url}/v1/batches/{batch_id}/cancel"):
            pass
        print(f"live c=2 with the batch running ({state['request_counts']['completed']} lines done meanwhile): "
              f"TTFT p50 {busy.ttft_p50_ms:.0f} ms, {busy.output_tok_s:.1f} tok/s ({busy.errors} errors)")
    print()
    print("| | measured | target |")
    print("|---|---|---|")
    print(f"| batch on an idle server / serve c=8, output tok/s | {batch_tok_s / serve8.output_tok_s:.2f}x "
          f"({batch_tok_s:.1f} vs {serve8.output_tok_s:.1f}) | >= 0.9x |")
    print(f"| live c=2 TTFT p50, batch running / idle | {busy.ttft_p50_ms / idle.ttft_p50_ms:.2f}x "
          f"({busy.ttft_p50_ms:.0f} vs {idle.ttft_p50_ms:.0f} ms) | <= 1.5x |")
    print(f"| live c=2 output tok/s, batch running / idle | {busy.output_tok_s / idle.output_tok_s:.2f}x "
          f"({busy.output_tok_s:.1f} vs {idle.output_tok_s:.1f}) | >= 0.8x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=256, help="Lines of the idle batch (default 256).")
    parser.add_argument("--max-tokens", type=int, default=128, help="New tokens per request (default 128).")
    parser.add_argument("--serve-requests", type=int, default=32, help="Requests of the c=8 serving load.")
    parser.add_argument("--live-requests", type=int, default=16, help="Requests of each c=2 live load.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--ctx-size", type=int, default=8192)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="llmserve-batch-bench-") as data_dir:
        cmd = [sys.executable, "-m", "llmserve", "serve", "--port", str(port), "--threads", str(args.threads),
               "--parallel", str(args.parallel), "--ctx-size", str(args.ctx_size), "--log-level", "warning",
               "--data-dir", data_dir]
        with server("llmserve-batch", cmd, port, "/health") as (url, pid):
            check_idle([pid])
            asyncio.run(bench(args, url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
