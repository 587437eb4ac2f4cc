"""Where the time of a decode step goes on this CPU, at c=1 and c=8 (issue 19), in one run.

Part 1, in-process (no HTTP): the bundled model on llmserve's llama.cpp engine, C streams of
--tokens tokens (``ignore_eos``), the engine thread timed from inside:

  decode   ``llama_decode``: the ggml graph (matmuls, attention, the OpenMP barriers between ops)
  sample   ``BatchSampler.sample``: logits to the step's token ids
  python   the rest of the step on the engine thread (admission, the batch, grammar masks,
           bookkeeping, handing deltas to the event loop)

Part 2, over HTTP: the same load against `llmserve serve` (streamed chat completions, SSE), with
every thread's CPU time read from /proc before and after: the event loop's CPU per token, the
engine thread's, and the OpenMP worker threads' against the wall time (they spin at barriers and
between steps, so a worker near 100 % of a core leaves none to the event loop on a 2-core machine).
Python threads are told from OpenMP's by ``py-spy dump`` (requirements/bench.txt).

    .venv/bin/python bench/step_profile.py                 # c=1 and c=8, 128 tokens a stream
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import llama_cpp as ll

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import PROMPTS, free_port, server  # noqa: E402

from llmserve import AsyncChatModel  # noqa: E402
from llmserve.bench.client import first_model, open_session, stream_chat  # noqa: E402
from llmserve.bench.report import machine  # noqa: E402
from llmserve.engines.llamacpp import sampler, scheduler  # noqa: E402


class Clock:
    """Wraps ``owner.name`` so every call adds its wall time here (the engine thread only calls it)."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.seconds, self.calls = owner, name, 0.0, 0
        self.inner = getattr(owner, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self.inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        setattr(owner, name, timed)

    def restore(self) -> None:
        setattr(self.owner, self.name, self.inner)

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


async def in_process(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    clocks = [Clock(ll, "llama_decode"), Clock(sampler.BatchSampler, "sample"), Clock(scheduler.Scheduler, "_step")]
    decode, sample, step = clocks
    out = {}
    try:
        async with AsyncChatModel(engine="llamacpp", threads=args.threads) as m:
            for c in args.concurrency:
                kw = {"temperature": 0.7, "max_tokens": args.tokens, "ignore_eos": True}
                await m.achat(PROMPTS[0], **kw)  # warm
                await asyncio.sleep(0.3)  # the engine thread finishes that step before the clocks restart
                for clock in clocks:
                    clock.reset()
                t0 = time.perf_counter()
                done = await asyncio.gather(*(m.achat(PROMPTS[i % len(PROMPTS)], **kw) for i in range(c)))
                wall = time.perf_counter() - t0
                await asyncio.sleep(0.3)  # the step that emitted the last token returns
                tokens = sum(r.usage.completion_tokens for r in done)
                n = max(decode.calls, 1)
                out[c] = {"steps": decode.calls, "tok_s": tokens / wall, "step_ms": 1e3 * wall / n,
                          "decode_ms": 1e3 * decode.seconds / n, "sample_ms": 1e3 * sample.seconds / n,
                          "python_ms": 1e3 * (step.seconds - decode.seconds - sample.seconds) / n,
                          "idle_ms": 1e3 * (wall - step.seconds) / n}
    finally:
        for clock in clocks:
            clock.restore()
    return out


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds) for every thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def python_threads(pid: int) -> dict[int, str]:
    """Native thread id -> name of every Python thread of ``pid`` (py-spy reads them); the
    process's other threads are ggml's OpenMP workers."""
    dump = subprocess.run(["py-spy", "dump", "--json", "--pid", str(pid)], capture_output=True, text=True, check=True)
    return {t["os_thread_id"]: t.get("thread_name") or "" for t in json.loads(dump.stdout) if t.get("os_thread_id")}


def role(tid: int, pid: int, python: dict[int, str]) -> str:
    if tid == pid:
        return "event loop"
    if python.get(tid, "").startswith("llmserve-llamacpp"):
        return "engine thread"
    if tid in python:
        return "other threads"
    return "OpenMP workers"


async def over_http(args: argparse.Namespace) -> dict[int, dict[str, float]]:
    port = free_port()
    cmd = [sys.executable, "-m", "llmserve", "serve", "--port", str(port), "--threads", str(args.threads),
           "--log-level", "warning"]
    out = {}
    with server("step-profile", cmd, port, "/health") as (url, pid):
        async with open_session(connections=16, timeout=600) as session:
            model = await first_model(session, url)
            kw = {"model": model, "max_tokens": args.tokens, "temperature": 0.7, "extra_body": {"ignore_eos": True}}
            for c in args.concurrency:
                await stream_chat(session, url, messages=[{"role": "user", "content": PROMPTS[0]}], **kw)
                python = python_threads(pid)
                before, t0 = thread_cpu(pid), time.perf_counter()
                results = await asyncio.gather(*(stream_chat(session, url, messages=[
                    {"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], **kw) for i in range(c)))
                wall, after = time.perf_counter() - t0, thread_cpu(pid)
                tokens = sum(r.output_tokens for r in results)
                cpu: dict[str, float] = {}
                for tid, (name, seconds) in after.items():
                    key = role(tid, pid, python)
                    cpu[key] = cpu.get(key, 0.0) + seconds - before.get(tid, (name, 0.0))[1]
                out[c] = {"tok_s": tokens / wall, "wall_s": wall, "tokens": tokens, **cpu}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,8", help="comma-separated stream counts")
    ap.add_argument("--tokens", type=int, default=128, help="output tokens per stream")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    print(machine())
    engine = asyncio.run(in_process(args))
    http = asyncio.run(over_http(args))
    print(f"\nin-process engine, {args.threads} threads, {args.tokens} tokens a stream: ms per step")
    print("| streams | tok/s | step | llama_decode | sampling | Python on the engine thread | engine thread idle |")
    print("|---|---|---|---|---|---|---|")
    for c, r in engine.items():
        print(f"| {c} | {r['tok_s']:.1f} | {r['step_ms']:.2f} | {r['decode_ms']:.2f} | {r['sample_ms']:.2f} | "
              f"{r['python_ms']:.2f} | {r['idle_ms']:.2f} |")
    print("\n`llmserve serve` over HTTP + SSE: CPU of each kind of thread (ms per output token; % of the wall time)")
    print("| streams | tok/s | event loop | engine thread | OpenMP workers | other threads |")
    print("|---|---|---|---|---|---|")
    for c, r in http.items():
        cells = []
        for key in ("event loop", "engine thread", "OpenMP workers", "other threads"):
            seconds = r.get(key, 0.0)
            cells.append(f"{1e3 * seconds / max(r['tokens'], 1):.2f} ms ({seconds / r['wall_s']:.0%})")
        print(f"| {c} | {r['tok_s']:.1f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
