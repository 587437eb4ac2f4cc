"""Side-by-side serving benchmark on the bundled model, all measured in one run.

Starts all of these at once (an idle server costs no CPU; the script checks), then drives them
one at a time, never together (they would share the 2 cores), with the same streamed chat load
(``ignore_eos``, so that every request is the same work: --max-tokens new tokens):

  llmserve          `llmserve serve` (llama.cpp engine, continuous batching), on the llama.cpp
                    build `make` installs (with llmserve's patches, patches/llama.cpp)
  llmserve-stock    the same server on llama-server's stock llama.cpp libraries
                    (LLAMA_CPP_LIB_PATH): the server layer alone, without the patches
  llama-server      llama.cpp's C++ server, built from the source llama-cpp-python vendors
                    (bench/build_llama_server.sh; cached)
  llama-cpp-python  `python -m llama_cpp.server` (interrupt_requests=False, as the issue asks),
                    on the stock libraries too, as its users install it
  in-process        llmserve's engine through AsyncChatModel, no HTTP

A shared 2-core machine drifts by several percent within minutes, so each concurrency level is
run in ``--rounds`` rounds, each round visiting every server back to back, in an order rotated
from round to round. The table shows, per server and level, the median round's output tok/s
and latency percentiles over the requests of all rounds. Each ratio is computed within every
round (servers measured minutes apart never meet in one ratio) and the median is printed with
the per-round values.

    .venv/bin/pip install -r requirements/bench.txt
    .venv/bin/python bench/serve_bench.py --concurrency 1,8,32 --requests 32 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import aiohttp

from llmserve.bench import report
from llmserve.bench.client import RequestResult, StreamClock, first_model, open_session, stream_chat
from llmserve.bench.runner import BenchParams, LevelResult, Target, drive, summarize
from llmserve.models import bundled_model_path

HERE = Path(__file__).resolve().parent
SERVERS = ("llmserve", "llmserve-stock", "llama-server", "llama-cpp-python", "in-process")
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
Send = Callable[[int], Awaitable[RequestResult]]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(label: str, cmd: list[str], port: int, health: str, env: dict[str, str] | None = None):
    """Runs ``cmd`` (``env`` added to ours) until the block ends; yields (url, pid) once
    ``health`` answers 200."""
    with open(HERE / f".server-{label}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"{label} exited; see {log.name}")
                try:
                    with urllib.request.urlopen(url + health, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:  # refused while starting, or an HTTP error status (503 while loading)
                    pass
                time.sleep(0.2)
            else:
                raise TimeoutError(f"{label} did not start: {cmd}")
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def server_commands(args: argparse.Namespace, model: str) -> dict[str, tuple[list[str], str, dict[str, str]]]:
    """label -> (command line with ``{port}``, health path, extra environment), for the servers asked for."""
    out: dict[str, tuple[list[str], str, dict[str, str]]] = {}
    t, np_, ctx = str(args.threads), str(args.parallel), str(args.ctx_size)
    binary = subprocess.run(["bash", str(HERE / "build_llama_server.sh")], check=True, capture_output=True,
                            text=True).stdout.strip().splitlines()[-1]
    stock = {"LLAMA_CPP_LIB_PATH": str(Path(binary).parent.parent / "lib")}  # llama-server's own libraries
    llmserve = [sys.executable, "-m", "llmserve", "serve", "--port", "{port}", "--threads", t, "--parallel", np_,
                "--ctx-size", ctx, "--log-level", "warning", "--max-queue", "256"]
    if "llmserve" in args.only:
        out["llmserve"] = (llmserve, "/health", {})
    if "llmserve-stock" in args.only:
        out["llmserve-stock"] = (llmserve, "/health", stock)
    if "llama-server" in args.only:
        out["llama-server"] = ([binary, "-m", model, "--port", "{port}", "-t", t, "-tb", t, "-np", np_, "-c", ctx,
                                "--no-webui", "--log-disable"], "/health", {})
    if "llama-cpp-python" in args.only:
        out["llama-cpp-python"] = ([sys.executable, "-m", "llama_cpp.server", "--model", model, "--port", "{port}",
                                    "--n_threads", t, "--n_ctx", "2048", "--interrupt_requests", "False"],
                                   "/v1/models", stock)
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def machine_busy_seconds() -> float:
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    return (sum(cpu) - cpu[3] - cpu[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def check_idle(pids: list[int], seconds: float = 3.0) -> None:
    """Warns when the started servers, or anything else, keep the CPU busy while idle."""
    ours, everything = cpu_seconds(pids), machine_busy_seconds()
    time.sleep(seconds)
    ours, everything = cpu_seconds(pids) - ours, machine_busy_seconds() - everything
    print(f"idle check over {seconds:.0f} s: servers used {ours / seconds:.1%} of a core, the whole machine "
          f"{everything / seconds:.1%}", file=sys.stderr)
    if everything / seconds > 0.10:
        print("WARNING: the machine is not idle; the figures below are not comparable", file=sys.stderr)


def http_send(client: aiohttp.ClientSession, url: str, model: str, params: BenchParams) -> Send:
    def send(index: int) -> Awaitable[RequestResult]:
        return stream_chat(client, url, model=model, messages=params.messages(index), max_tokens=params.max_tokens,
                           temperature=params.temperature, extra_body=params.extra_body)

    return send


def in_process_send(model, params: BenchParams) -> Send:
    """The same load straight into AsyncChatModel: what HTTP and SSE cost is the difference."""

    async def send(index: int) -> RequestResult:
        clock, tokens = StreamClock(), 0
        async for delta in model.astream_deltas(params.messages(index), max_tokens=params.max_tokens,
                                                temperature=params.temperature, **params.extra_body):
            if delta.text:
                clock.content()
            if delta.usage is not None:
                tokens = delta.usage.completion_tokens
        return clock.result(tokens=tokens)

    return send


Rounds = dict[tuple[str, int], list[tuple[list[RequestResult], float]]]


async def run_rounds(args: argparse.Namespace, params: BenchParams, urls: dict[str, str]) -> Rounds:
    """Every level, ``args.rounds`` times, every server back to back in a rotating order."""
    from llmserve import AsyncChatModel

    rounds: Rounds = {}
    async with open_session(connections=max(params.concurrency), timeout=params.timeout) as client, \
            AsyncExitStack() as stack:
        sends: dict[str, Send] = {}
        for label, url in urls.items():
            model = await first_model(client, url)
            sends[label] = http_send(client, url, model, params)
        if "in-process" in args.only:
            local = await stack.enter_async_context(
                AsyncChatModel(engine="llamacpp", threads=args.threads, parallel=args.parallel, ctx_size=args.ctx_size))
            sends["in-process"] = in_process_send(local, params)
        for send in sends.values():  # warm-up: first-request costs stay out of the figures
            await asyncio.gather(*(send(i) for i in range(params.warmup)))
        labels = list(sends)
        with report.progress_bar() as (on_level_start, on_done):
            for concurrency in params.concurrency:
                total = params.n_requests(concurrency)
                for r in range(args.rounds):
                    for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                        on_level_start(Target(f"{label} round {r + 1}", ""), concurrency, total)
                        run = await drive(sends[label], total, concurrency, on_done)
                        rounds.setdefault((label, concurrency), []).append(run)
    return rounds


def summaries(rounds: Rounds) -> list[LevelResult]:
    """One row per server and level: the median round's tok/s, percentiles over all rounds."""
    out = []
    for (label, concurrency), runs in rounds.items():
        pooled = summarize(Target(label, ""), "bundled", concurrency, [r for results, _ in runs for r in results],
                           sum(d for _, d in runs))
        out.append(replace(pooled, output_tok_s=statistics.median(round_tok_s(runs))))
    return out


def round_tok_s(runs: list[tuple[list[RequestResult], float]]) -> list[float]:
    return [sum(r.output_tokens for r in results if r.ok) / duration for results, duration in runs]


def ratio(rounds: Rounds, a: str, b: str, c: int) -> str:
    """Median over rounds of a/b output tok/s, each round's pair measured back to back."""
    if (a, c) not in rounds or (b, c) not in rounds:
        return "n/a"
    per_round = [x / y for x, y in zip(round_tok_s(rounds[(a, c)]), round_tok_s(rounds[(b, c)])) if y]
    if not per_round:
        return "n/a"
    return f"{statistics.median(per_round):.2f}x (rounds: {' '.join(f'{x:.2f}' for x in per_round)})"


def field_ratio(results: list[LevelResult], a: str, b: str, c: int, field: str) -> str:
    x = next((getattr(r, field) for r in results if r.label == a and r.concurrency == c), None)
    y = next((getattr(r, field) for r in results if r.label == b and r.concurrency == c), None)
    return f"{x / y:.2f}x" if x and y else "n/a"


def print_ratios(args: argparse.Namespace, rounds: Rounds, results: list[LevelResult], levels: tuple[int, ...]) -> None:
    c = 8 if 8 in levels else levels[-1]
    print(f"\nratios (output tok/s unless noted), temperature {args.temperature}, {args.max_tokens} new tokens, "
          f"{args.threads} threads, {args.rounds} rounds:")
    for level in levels:
        print(f"  c={level}: llmserve / llama-server      {ratio(rounds, 'llmserve', 'llama-server', level)}   "
              f"(target >= {'1.0' if level == 1 else '1.3'}x)")
    print(f"  c={c}:   of which the server layer: llmserve-stock / llama-server  "
          f"{ratio(rounds, 'llmserve-stock', 'llama-server', c)}")
    print(f"  c={c}:   and llmserve's llama.cpp patch: llmserve / llmserve-stock  "
          f"{ratio(rounds, 'llmserve', 'llmserve-stock', c)}")
    print(f"  c={c}: llmserve / llama-cpp-python  {ratio(rounds, 'llmserve', 'llama-cpp-python', c)}   "
          "(target >= 3x)")
    print(f"  c={c}: TTFT p50 llama-server / llmserve  "
          f"{field_ratio(results, 'llama-server', 'llmserve', c, 'ttft_p50_ms')}   (target >= 1.0x)")
    if 1 in levels:
        print(f"  c=1: TTFT p50 llama-server / llmserve  "
              f"{field_ratio(results, 'llama-server', 'llmserve', 1, 'ttft_p50_ms')}   (target >= 1.0x)")
        ttft1 = next((r.ttft_p50_ms for r in results if r.label == "llmserve" and r.concurrency == 1), None)
        if ttft1:
            print(f"  c=1: llmserve TTFT p50             {ttft1:.0f} ms   (target <= 100 ms)")
    for level in levels:
        print(f"  c={level}: llmserve / in-process         {ratio(rounds, 'llmserve', 'in-process', level)}   "
              "(HTTP + SSE cost; target >= 0.95x)")
    if 1 in levels and ("llmserve", c) in rounds and ("llmserve", 1) in rounds:
        x = statistics.median(round_tok_s(rounds[("llmserve", c)]))
        y = statistics.median(round_tok_s(rounds[("llmserve", 1)]))
        print(f"  llmserve c={c} / c=1               {x / y:.2f}x   (target >= 1.5x)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=None, help="per level and round (default 4 x concurrency)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per level (default 3)")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx-size", type=int, default=8192)
    ap.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
                    help="every request generates exactly --max-tokens (as vLLM's benchmark does; default on). "
                         "llama-cpp-python's server does not know the field and may stop early")
    ap.add_argument("--only", default=",".join(SERVERS), help="comma-separated subset of the servers to run")
    ap.add_argument("--json", default=None, help="also write the results (and every round's tok/s) as JSON here")
    ap.add_argument("--plot", default=None, help="also draw throughput and TTFT here (PNG)")
    args = ap.parse_args()
    args.only = set(args.only.split(","))
    levels = tuple(int(c) for c in args.concurrency.split(","))
    params = BenchParams(concurrency=levels, requests=args.requests, max_tokens=args.max_tokens,
                         prompts=PROMPTS, temperature=args.temperature, warmup=2,
                         extra_body={"ignore_eos": True} if args.ignore_eos else {})
    with ExitStack() as stack:
        urls, pids = {}, []
        for label, (cmd, health, env) in server_commands(args, str(bundled_model_path())).items():
            port = free_port()
            print(f"-- starting {label}", file=sys.stderr)
            url, pid = stack.enter_context(server(label, [a.format(port=port) for a in cmd], port, health, env))
            urls[label] = url
            pids.append(pid)
        print(report.machine())
        check_idle(pids)
        rounds = asyncio.run(run_rounds(args, params, urls))
    order = [s for s in SERVERS if s in args.only]
    results = sorted(summaries(rounds), key=lambda r: (order.index(r.label), r.concurrency))
    report.print_table(results)
    print_ratios(args, rounds, results, levels)
    if args.json:
        per_round = {f"{label} c={c}": round_tok_s(runs) for (label, c), runs in rounds.items()}
        Path(args.json).write_text(json.dumps({"results": [asdict(r) for r in results],
                                               "round_output_tok_s": per_round}, indent=2))
    if args.plot:
        report.plot(results, args.plot)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
