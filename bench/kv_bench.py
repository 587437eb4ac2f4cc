"""The unified KV cache against the old even split and against llama-server, in one run.

Starts these servers at once (idle servers cost no CPU; the script checks), then drives them
one at a time with the same streamed chat load as serve_bench.py (``ignore_eos``):

  unified       `llmserve serve` as shipped: one KV cache of the model's context shared by all
                requests, slots sized automatically (32 for the bundled model)
  split         `llmserve serve --kv-split --parallel 8`: the layout before (each of 8 slots owns
                ctx-size / 8 tokens)
  llama-server  llama.cpp's server run for 32 users the way its docs say: `-np 32 --kv-unified`
                (stock build, bench/build_llama_server.sh)

and prints, with each ratio taken within rounds (servers back to back, rotating order):

  c=8   unified / split                        (target >= 0.95x)
  c=32  unified / unified at c=8               (target >= 1.4x)
  c=32  unified / llama-server                 (target >= 1.5x)
  RSS of the unified server idle and at its peak under c=32 (target <= 500 MB)
  fairness: ITL p50 of 7 chat streams while a --long-tokens prompt is prefilled, over their
            ITL p50 just before (target <= 2x)

    .venv/bin/python bench/kv_bench.py                       # the issue's sizes (idle machine)
    .venv/bin/python bench/kv_bench.py --small               # a quick check that it all works
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import HERE, PROMPTS, Rounds, check_idle, free_port, http_send, ratio, round_tok_s, server  # noqa: E402

from llmserve.bench.client import first_model, open_session  # noqa: E402
from llmserve.bench.runner import BenchParams, Target, drive  # noqa: E402
from llmserve.models import bundled_model_path  # noqa: E402

SERVERS = ("unified", "split", "llama-server")


def commands(args: argparse.Namespace) -> dict[str, tuple[list[str], str]]:
    t = str(args.threads)
    llmserve = [sys.executable, "-m", "llmserve", "serve", "--port", "{port}", "--threads", t, "--log-level",
                "warning", "--max-queue", "256"]
    out = {}
    if "unified" in args.only:
        out["unified"] = (llmserve, "/health")
    if "split" in args.only:
        out["split"] = (llmserve + ["--kv-split", "--parallel", "8", "--ctx-size", "8192"], "/health")
    if "llama-server" in args.only:
        import subprocess

        binary = subprocess.run(["bash", str(HERE / "build_llama_server.sh")], check=True, capture_output=True,
                                text=True).stdout.strip().splitlines()[-1]
        out["llama-server"] = ([binary, "-m", str(bundled_model_path()), "--port", "{port}", "-t", t, "-tb", t,
                                "-np", "32", "--kv-unified", "-c", "8192", "--no-webui", "--log-disable"], "/health")
    return out


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples a process's RSS every 0.1 s in a thread while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


async def throughput(args, params: BenchParams, urls: dict[str, str], pids: dict[str, int]) -> tuple[Rounds, float]:
    rounds: Rounds = {}
    peak = 0.0
    async with open_session(connections=max(params.concurrency), timeout=params.timeout) as client:
        sends = {label: http_send(client, url, await first_model(client, url), params) for label, url in urls.items()}
        for send in sends.values():
            await asyncio.gather(*(send(i) for i in range(params.warmup)))
        labels = list(sends)
        for c in params.concurrency:
            for r in range(args.rounds):
                for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                    print(f"-- c={c} round {r + 1}: {label}", file=sys.stderr)
                    watch = label == "unified" and c == max(params.concurrency)
                    with PeakRss(pids[label]) if watch else ExitStack() as rss:
                        run = await drive(sends[label], params.n_requests(c), c, lambda *_: None)
                    if watch:
                        peak = max(peak, rss.peak)
                    rounds.setdefault((label, c), []).append(run)
    return rounds, peak


def long_prompt(n_tokens: int) -> str:
    """About ``n_tokens`` tokens of numbered facts (~19.5 tokens each for the bundled model), unique per call."""
    facts = [f"Fact {i}: the parcel {i * 7 % 1000} went to house {i * 13 % 997}." for i in range(n_tokens * 2 // 39)]
    return f"Note {uuid.uuid4().hex[:8]}. " + " ".join(facts) + " Which parcel went to house 13?"


async def timed_stream(session: aiohttp.ClientSession, url: str, model: str, messages, max_tokens: int,
                       stamps: list[float]) -> None:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
            "temperature": 0.7, "ignore_eos": True}
    async with session.post(url + "/v1/chat/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
        async for line in r.content:
            if line.startswith(b"data:") and b'"content"' in line:
                stamps.append(time.perf_counter())


async def fairness(args, url: str) -> tuple[float, float, float]:
    """(ITL p50 before, ITL p50 while the long prompt is prefilled, seconds the prefill took)."""
    stop = asyncio.Event()
    gaps: list[tuple[float, float]] = []  # (time of the token, gap before it)

    async with open_session(connections=16, timeout=3600) as session:
        model = await first_model(session, url)

        async def chat_user(i: int) -> None:
            n = 0
            while not stop.is_set():
                stamps: list[float] = []
                msgs = [{"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}]
                await timed_stream(session, url, model, msgs, args.fair_chat_tokens, stamps)
                gaps.extend((b, b - a) for a, b in zip(stamps, stamps[1:]))
                n += 1

        users = [asyncio.ensure_future(chat_user(i)) for i in range(7)]
        await asyncio.sleep(args.fair_seconds)
        t0 = time.perf_counter()
        stamps: list[float] = []
        await timed_stream(session, url, model, [{"role": "user", "content": long_prompt(args.long_tokens)}], 1, stamps)
        t1 = stamps[0] if stamps else time.perf_counter()
        stop.set()
        await asyncio.gather(*users)
    before = [g for t, g in gaps if t0 - args.fair_seconds / 2 <= t < t0]
    during = [g for t, g in gaps if t0 <= t < t1]
    return statistics.median(before) * 1e3, statistics.median(during) * 1e3 if during else float("nan"), t1 - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a quick run: 16 new tokens, 1 round, 1,500-token prompt")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=None, help="per level and round (default 4 x concurrency)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--long-tokens", type=int, default=6000, help="the long prompt of the fairness figure")
    ap.add_argument("--fair-seconds", type=float, default=10.0, help="chat streams run this long before it")
    ap.add_argument("--fair-chat-tokens", type=int, default=64, help="tokens each chat of the fairness figure asks")
    ap.add_argument("--only", default=",".join(SERVERS))
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.small:
        args.max_tokens, args.rounds, args.long_tokens, args.fair_seconds = 16, 1, 1500, 4.0
        args.requests = args.requests or 32
    args.only = set(args.only.split(","))
    params = BenchParams(concurrency=(8, 32), requests=args.requests, max_tokens=args.max_tokens, prompts=PROMPTS,
                         temperature=0.7, warmup=2, extra_body={"ignore_eos": True})
    with ExitStack() as stack:
        urls, pids = {}, {}
        for label, (cmd, health) in commands(args).items():
            port = free_port()
            print(f"-- starting {label}", file=sys.stderr)
            urls[label], pids[label] = stack.enter_context(server(label, [a.format(port=port) for a in cmd], port, health))
        check_idle(list(pids.values()))
        idle_rss = rss_mb(pids["unified"]) if "unified" in pids else float("nan")
        rounds, peak_rss = asyncio.run(throughput(args, params, urls, pids))
        fair = asyncio.run(fairness(args, urls["unified"])) if "unified" in urls else None

    def tok_s(label: str, c: int) -> str:
        return f"{statistics.median(round_tok_s(rounds[(label, c)])):.1f}" if (label, c) in rounds else "n/a"

    print(f"\noutput tok/s (median round), {args.max_tokens} new tokens, {args.threads} threads, {args.rounds} rounds:")
    for label in [s for s in SERVERS if s in urls]:
        print(f"  {label:13s} c=8 {tok_s(label, 8):>8s}   c=32 {tok_s(label, 32):>8s}")
    own = "n/a"
    if ("unified", 8) in rounds and ("unified", 32) in rounds:
        per_round = [a / b for a, b in zip(round_tok_s(rounds[("unified", 32)]), round_tok_s(rounds[("unified", 8)]))]
        own = f"{statistics.median(per_round):.2f}x"
    print("\nratios:")
    print(f"  c=8:  unified / split           {ratio(rounds, 'unified', 'split', 8)}   (target >= 0.95x)")
    print(f"  c=32: unified / unified c=8     {own}   (target >= 1.4x)")
    print(f"  c=32: unified / llama-server    {ratio(rounds, 'unified', 'llama-server', 32)}   (target >= 1.5x)")
    print(f"  RSS of the unified server: idle {idle_rss:.0f} MB, peak under c=32 {peak_rss:.0f} MB   (target <= 500 MB)")
    if fair:
        before, during, seconds = fair
        print(f"  fairness: 7 streams' ITL p50 {before:.1f} ms before, {during:.1f} ms while a {args.long_tokens}-token "
              f"prompt was prefilled ({seconds:.1f} s): {during / before:.2f}x   (target <= 2x)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "round_output_tok_s": {f"{label} c={c}": round_tok_s(runs) for (label, c), runs in rounds.items()},
            "rss_idle_mb": idle_rss, "rss_peak_c32_mb": peak_rss, "fairness_ms": fair}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
