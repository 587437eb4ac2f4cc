"""Prompt-prefix reuse on the bundled model: the second turn of a chat, warm against cold.

A chat client resends the whole conversation every turn. For each of --conversations
conversations (a long made-up document, a question, the answer, a follow-up question), the
script times the first token of the follow-up turn twice, one request at a time:

  warm  right after the conversation's first turn, whose KV is still in a slot: only the new
        suffix is prefilled
  cold  the same shape of request for a conversation the server has never seen: the whole
        history is prefilled (but for the template's system prompt, shared by every request)

and prints TTFT p50 for both, their ratio, and the prompt tokens each server reported reused
(usage.prompt_tokens_details.cached_tokens). llama-server (cache_prompt, on by default) runs
the same load in the same run unless --only llmserve.

    .venv/bin/python bench/prefix_bench.py --conversations 8 --history-words 700
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
from contextlib import ExitStack
from pathlib import Path

from serve_bench import free_port, server

from llmserve.bench.client import RequestResult, first_model, open_session, stream_chat
from llmserve.models import bundled_model_path

HERE = Path(__file__).resolve().parent
WORDS = ("harbor lantern river stone market bread letter sailor village mountain garden winter copper "
         "engine signal bridge forest meadow storm candle window orchard island ferry clock mill").split()


def document(seed: int, words: int) -> str:
    rng = random.Random(seed)
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + ".")
    return " ".join(sentences)


def first_turn(seed: int, words: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Here are my notes:\n{document(seed, words)}\n\nWhat are they about?"}]


def second_turn(history: list[dict[str, str]], answer: str) -> list[dict[str, str]]:
    return history + [{"role": "assistant", "content": answer},
                      {"role": "user", "content": "Which word comes up most often?"}]


async def measure(url: str, conversations: int, words: int) -> tuple[list[RequestResult], list[RequestResult]]:
    warm, cold = [], []
    async with open_session(connections=1, timeout=600) as session:
        model = await first_model(session, url)

        async def send(messages, max_tokens):
            result = await stream_chat(session, url, model=model, messages=messages, max_tokens=max_tokens)
            if not result.ok:
                raise RuntimeError(f"{url}: {result.error}")
            return result

        await send(first_turn(10_000, 50), 4)  # warm-up
        answer = "They are notes about a harbor town."  # the same assistant turn for every history
        for i in range(conversations):
            history = first_turn(i, words)
            await send(history, 16)
            warm.append(await send(second_turn(history, answer), 8))
        for i in range(conversations):  # histories never sent before
            cold.append(await send(second_turn(first_turn(1_000 + i, words), answer), 8))
    return warm, cold


def p50_ms(results: list[RequestResult]) -> float:
    return statistics.median(r.ttft for r in results) * 1000


def cached(results: list[RequestResult]) -> str:
    values = [r.cached_tokens for r in results if r.cached_tokens is not None]
    return f"{statistics.median(values):.0f}" if values else "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--history-words", type=int, default=700, help="words of made-up notes in each history")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx-size", type=int, default=16384, help="total context (each slot gets ctx-size / parallel)")
    ap.add_argument("--only", default="llmserve,llama-server")
    args = ap.parse_args()
    only = args.only.split(",")
    t, np_, ctx = str(args.threads), str(args.parallel), str(args.ctx_size)
    commands = {"llmserve": [sys.executable, "-m", "llmserve", "serve", "--port", "{port}", "--threads", t,
                             "--parallel", np_, "--ctx-size", ctx, "--log-level", "warning"]}
    if "llama-server" in only:
        import subprocess

        binary = subprocess.run(["bash", str(HERE / "build_llama_server.sh")], check=True, capture_output=True,
                                text=True).stdout.strip().splitlines()[-1]
        commands["llama-server"] = [binary, "-m", str(bundled_model_path()), "--port", "{port}", "-t", t, "-tb", t,
                                    "-np", np_, "-c", ctx, "--no-webui", "--log-disable"]
    print(f"{args.conversations} conversations, ~{args.history_words} words of history each, "
          f"{args.threads} threads, one request at a time")
    print(f"{'server':14} {'prompt tokens':>13} {'cached warm':>11} {'cached cold':>11} "
          f"{'TTFT warm':>10} {'TTFT cold':>10} {'cold / warm':>11}")
    for label in only:
        port = free_port()
        with ExitStack() as stack:
            url, _ = stack.enter_context(server(label, [a.format(port=port) for a in commands[label]], port, "/health"))
            warm, cold = asyncio.run(measure(url, args.conversations, args.history_words))
        prompt = statistics.median(r.prompt_tokens for r in warm if r.prompt_tokens) if any(
            r.prompt_tokens for r in warm) else float("nan")
        print(f"{label:14} {prompt:>13.0f} {cached(warm):>11} {cached(cold):>11} "
              f"{p50_ms(warm):>8.0f}ms {p50_ms(cold):>8.0f}ms {p50_ms(cold) / p50_ms(warm):>10.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
