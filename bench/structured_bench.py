"""Constrained decoding against the same requests unconstrained, on one llmserve server, in one run.

Each round sends --requests streaming chat requests at --concurrency (c=8 by default) twice, back
to back in alternating order: once with a json_schema response_format, once without. Every
request generates exactly --max-tokens tokens (the schema asks for a list too long to finish
within them, the free requests set ignore_eos), so both sides do the same work and the ratio of
output tokens per second is the cost of the masks. Printed: output tok/s of each side per round,
and the median ratio (issue 13 asks >= 0.95). Also printed: compile time of a typical tool schema
with llguidance on the bundled vocabulary (issue 13 asks <= 50 ms).

    .venv/bin/python bench/structured_bench.py --rounds 5 --requests 32 --max-tokens 128 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

from serve_bench import free_port, server

from llmserve.bench.client import first_model, open_session, stream_chat

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"}, "role": {"enum": ["admin", "user", "guest"]},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "role", "city"], "additionalProperties": False,
}
# too many people to finish within max_tokens: every constrained request generates exactly max_tokens
SCHEMA = {"type": "object", "properties": {"people": {"type": "array", "items": PERSON, "minItems": 1000}},
          "required": ["people"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "people", "schema": SCHEMA, "strict": True}}
PROMPT = [{"role": "user", "content": "List many people with their name, age, role and city as JSON."}]
# a typical tool: what `tools` sends for one function, as the schema of one tool call
TOOL_CALL = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
                "include": {"type": "array", "items": {"enum": ["wind", "rain", "uv"]}},
            },
            "required": ["location", "unit"], "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"], "additionalProperties": False,
}


async def side(url: str, n: int, concurrency: int, max_tokens: int, constrained: bool) -> tuple[float, int]:
    """(output tokens per second, requests that failed or fell short) for one batch."""
    extra = {"response_format": FORMAT} if constrained else {"ignore_eos": True}
    async with open_session(connections=concurrency, timeout=900) as session:
        model = await first_model(session, url)
        gate = asyncio.Semaphore(concurrency)

        async def one():
            async with gate:
                return await stream_chat(session, url, model=model, messages=PROMPT, max_tokens=max_tokens,
                                         temperature=0.8, extra_body=extra)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - t0
    bad = sum(1 for r in results if not r.ok or r.output_tokens != max_tokens)
    return sum(r.output_tokens for r in results if r.ok) / wall, bad


def compile_ms(samples: int) -> tuple[float, float]:
    """Median ms to compile TOOL_CALL (a fresh schema each time: no cache), and to build the
    backend from the bundled vocabulary once."""
    from llmserve.engines.llamacpp.model import LlamaModel
    from llmserve.models import bundled_model_path
    from llmserve.structured.llguidance_backend import LLGuidanceBackend
    from llmserve.types import Constraint

    model = LlamaModel(bundled_model_path())
    t0 = time.perf_counter()
    backend = LLGuidanceBackend.from_llamacpp(model.vocab, eog=[t for t in range(model.n_vocab) if model.is_eog(t)],
                                              n_vocab=model.n_vocab)
    build = (time.perf_counter() - t0) * 1000
    times = []
    for i in range(samples):
        schema = json.loads(json.dumps(TOOL_CALL))
        schema["properties"]["arguments"]["properties"]["location"]["description"] += f" #{i}"
        t0 = time.perf_counter()
        backend.compile(Constraint("json_schema", json.dumps(schema)))
        times.append((time.perf_counter() - t0) * 1000)
    model.close()
    return statistics.median(times), build


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=32, help="requests per side per round")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--ctx-size", type=int, default=8192)
    ap.add_argument("--compile-samples", type=int, default=20)
    args = ap.parse_args()

    ms, build = compile_ms(args.compile_samples)
    print(f"compile a typical tool schema: {ms:.1f} ms median of {args.compile_samples} "
          f"(llguidance tokenizer from the vocabulary, once per model: {build:.0f} ms)")
    port = free_port()
    cmd = [sys.executable, "-m", "llmserve", "serve", "--port", str(port), "--threads", str(args.threads),
           "--parallel", str(args.parallel), "--ctx-size", str(args.ctx_size), "--log-level", "warning",
           "--max-queue", "256"]
    print(f"c={args.concurrency}, {args.requests} requests x {args.max_tokens} tokens per side, {args.threads} threads")
    print(f"{'round':>5} {'json_schema tok/s':>18} {'free tok/s':>11} {'ratio':>6}")
    ratios = []
    with server("llmserve", cmd, port, "/health") as (url, _):
        asyncio.run(side(url, args.concurrency, args.concurrency, 16, True))  # warm-up: compile, caches
        for i in range(args.rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            rate = {}
            for constrained in order:
                rate[constrained], bad = asyncio.run(side(url, args.requests, args.concurrency, args.max_tokens,
                                                          constrained))
                if bad:
                    print(f"  {bad} {'constrained' if constrained else 'free'} requests failed or fell short")
            ratios.append(rate[True] / rate[False])
            print(f"{i + 1:>5} {rate[True]:>18.1f} {rate[False]:>11.1f} {ratios[-1]:>6.3f}")
    print(f"json_schema / unconstrained output tok/s, median of {args.rounds} rounds: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
