"""Side-by-side serving benchmark on the bundled model, all measured in one run.

Starts, one after another (never together: they would share the 2 cores), and drives with the
same streamed chat load at each concurrency level:

  llmserve          `llmserve serve` (llama.cpp engine, continuous batching)
  llama-server      llama.cpp's C++ server, built from the source llama-cpp-python vendors
                    (bench/build_llama_server.sh; cached; skipped with --no-llama-server)
  llama-cpp-python  `python -m llama_cpp.server` (interrupt_requests=False, as the issue asks)
  in-process        llmserve's engine through AsyncChatModel, no HTTP

then prints one table and the ratios the performance targets are stated in.

    .venv/bin/pip install -r requirements/bench.txt
    .venv/bin/python bench/serve_bench.py --concurrency 1,8,32 --max-tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from llmserve.bench import report
from llmserve.bench.client import RequestResult
from llmserve.bench.runner import BenchParams, LevelResult, Target, run_sweep, summarize
from llmserve.models import bundled_model_path

HERE = Path(__file__).resolve().parent
PROMPTS = (
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy market in a port city.",
    "Write a long letter from a sailor to his family.",
    "Tell the history of a small mountain village over a hundred years.",
    "Describe how to bake bread at home, step by step.",
    "Write a detailed travel guide to an imaginary island.",
    "Tell a long fairy tale about a clever fox and a proud crow.",
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(cmd: list[str], port: int, health: str = "/v1/models"):
    log = open(HERE / f".server-{port}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited; see {log.name}")
            try:
                if httpx.get(url + health, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise TimeoutError(f"{cmd} did not start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def in_process(params: BenchParams, threads: int, parallel: int, ctx: int) -> list[LevelResult]:
    """The same load straight into AsyncChatModel: what HTTP and SSE cost is the difference."""
    from llmserve import AsyncChatModel

    target = Target("in-process", "-")
    out = []
    async with AsyncChatModel(engine="llamacpp", threads=threads, parallel=parallel, ctx_size=ctx) as model:
        await model.achat(PROMPTS[0], max_tokens=16)
        for concurrency in params.concurrency:
            total = params.n_requests(concurrency)
            results: list[RequestResult] = []
            next_index = 0

            async def worker() -> None:
                nonlocal next_index
                while next_index < total:
                    index = next_index
                    next_index += 1
                    start = last = time.perf_counter()
                    ttft, gaps, tokens = None, [], 0
                    async for delta in model.astream_deltas(params.messages(index), max_tokens=params.max_tokens,
                                                            temperature=params.temperature):
                        if delta.text:
                            now = time.perf_counter()
                            if ttft is None:
                                ttft = now - start
                            else:
                                gaps.append(now - last)
                            last = now
                        if delta.usage is not None:
                            tokens = delta.usage.completion_tokens
                    results.append(RequestResult(True, time.perf_counter() - start, ttft, gaps, tokens))

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
            out.append(summarize(target, "bundled", concurrency, results, time.perf_counter() - start))
    return out


def ratio(results: list[LevelResult], a: str, b: str, c: int, field: str = "output_tok_s") -> str:
    x = next((getattr(r, field) for r in results if r.label == a and r.concurrency == c), None)
    y = next((getattr(r, field) for r in results if r.label == b and r.concurrency == c), None)
    return f"{x / y:.2f}x" if x and y else "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=None, help="per level (default 4 x concurrency)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx-size", type=int, default=8192)
    ap.add_argument("--only", default="llmserve,llama-server,llama-cpp-python,in-process",
                    help="comma-separated subset of the servers to run")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--plot", default=None, help="also draw throughput and TTFT here (PNG)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    levels = tuple(int(c) for c in args.concurrency.split(","))
    params = BenchParams(concurrency=levels, requests=args.requests, max_tokens=args.max_tokens,
                         prompts=PROMPTS, temperature=args.temperature, warmup=2)
    model = str(bundled_model_path())
    results: list[LevelResult] = []

    def sweep(label: str, url: str) -> None:
        print(f"-- {label}", file=sys.stderr)
        with report.progress_bar() as (on_level_start, on_done):
            results.extend(asyncio.run(run_sweep([Target(label, url)], params, on_level_start=on_level_start,
                                                 on_done=on_done)))

    if "llmserve" in only:
        port = free_port()
        cmd = [sys.executable, "-m", "llmserve", "serve", "--port", str(port), "--threads", str(args.threads),
               "--parallel", str(args.parallel), "--ctx-size", str(args.ctx_size), "--log-level", "warning",
               "--max-queue", "256"]
        with server(cmd, port, health="/health") as url:
            sweep("llmserve", url)
    if "llama-server" in only:
        binary = subprocess.run(["bash", str(HERE / "build_llama_server.sh")], check=True, capture_output=True,
                                text=True).stdout.strip().splitlines()[-1]
        port = free_port()
        cmd = [binary, "-m", model, "--port", str(port), "-t", str(args.threads), "-tb", str(args.threads),
               "-np", str(args.parallel), "-c", str(args.ctx_size), "--no-webui", "--log-disable"]
        with server(cmd, port, health="/health") as url:
            sweep("llama-server", url)
    if "llama-cpp-python" in only:
        port = free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--port", str(port),
               "--n_threads", str(args.threads), "--n_ctx", "2048", "--interrupt_requests", "False"]
        with server(cmd, port) as url:
            sweep("llama-cpp-python", url)
    if "in-process" in only:
        print("-- in-process", file=sys.stderr)
        results.extend(asyncio.run(in_process(params, args.threads, args.parallel, args.ctx_size)))

    report.print_table(results)
    c_mid = 8 if 8 in levels else levels[-1]
    print(f"\nratios (output tok/s unless noted), temperature {args.temperature}, {args.max_tokens} new tokens, "
          f"{args.threads} threads:")
    print(f"  c={c_mid}: llmserve / llama-server      {ratio(results, 'llmserve', 'llama-server', c_mid)}   (target >= 1.1x)")
    print(f"  c={c_mid}: llmserve / llama-cpp-python  {ratio(results, 'llmserve', 'llama-cpp-python', c_mid)}   (target >= 3x)")
    print(f"  c={c_mid}: TTFT p50 llama-server / llmserve  "
          f"{ratio(results, 'llama-server', 'llmserve', c_mid, 'ttft_p50_ms')}   (target >= 1.0x)")
    if 1 in levels:
        print(f"  c=1: llmserve / llama-server        {ratio(results, 'llmserve', 'llama-server', 1)}   (target >= 0.95x)")
        ttft1 = next((r.ttft_p50_ms for r in results if r.label == "llmserve" and r.concurrency == 1), None)
        print(f"  c=1: llmserve TTFT p50             {ttft1:.0f} ms   (target <= 100 ms)" if ttft1 else "")
    print(f"  c={c_mid}: llmserve / in-process         {ratio(results, 'llmserve', 'in-process', c_mid)}   "
          "(HTTP + SSE overhead; target >= 0.97x)")
    if 1 in levels:
        x = next((r.output_tok_s for r in results if r.label == "llmserve" and r.concurrency == c_mid), None)
        y = next((r.output_tok_s for r in results if r.label == "llmserve" and r.concurrency == 1), None)
        print(f"  llmserve c={c_mid} / c=1               {x / y:.2f}x   (target >= 1.5x)" if x and y else "")
    if args.json:
        Path(args.json).write_text(report.to_json(results))
    if args.plot:
        report.plot(results, args.plot)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
