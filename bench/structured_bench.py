"""Constrained decoding against the same requests unconstrained, on one llmserve server, in one run.

Each round sends --requests streaming chat requests at --concurrency (c=8 by default) twice, back
to back in alternating order: once with a json_schema response_format, once without. Every
request generates exactly --max-tokens tokens (the schema asks for a list too long to finish
within them, the free requests set ignore_eos), so both sides do the same work and the ratio of
output tokens per second is the cost of the masks. Printed: output tok/s of each side per round,
and the median ratio (issue 13 asks >= 0.95). When the server takes `tools`, a third side sends
the free requests with a tool and `tool_choice: "auto"` (a lazy grammar that never triggers:
issue 13 asks >= 0.98 of free). Also printed: compile time of a typical tool schema with
llguidance on the bundled vocabulary (issue 13 asks <= 50 ms).

    .venv/bin/python bench/structured_bench.py --rounds 5 --requests 32 --max-tokens 128 --threads 2

(For the tool_choice=auto side, --requests equal to --concurrency (one wave) keeps the longer
prompts' prefill out of the decode rate.)
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


TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather forecast for a city",
                                         "parameters": TOOL_CALL["properties"]["arguments"]}}
EXTRA = {
    "json_schema": {"response_format": FORMAT},
    "free": {"ignore_eos": True},
    "auto": {"ignore_eos": True, "tools": [TOOL], "tool_choice": "auto"},
}


async def takes_tools(url: str) -> bool:
    async with open_session(connections=1, timeout=300) as session:
        model = await first_model(session, url)
        r = await stream_chat(session, url, model=model, messages=PROMPT, max_tokens=2, extra_body=EXTRA["auto"])
    return r.ok


async def side(url: str, n: int, concurrency: int, max_tokens: int, kind: str) -> tuple[float, float, int]:
    """(output tokens per second, decode tokens per second, requests that failed or fell short)
    for one batch. Decode tok/s leaves prefill out: ``concurrency`` times the median of each
    request's (tokens - 1) / (latency - TTFT); the tools side has a longer prompt (the tools are
    rendered into it), so only its decode rate compares with the free side's."""
    extra = EXTRA[kind]
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
    decode = [(r.output_tokens - 1) / (r.latency - r.ttft) for r in results
              if r.ok and r.ttft is not None and r.output_tokens > 1 and r.latency > r.ttft]
    return sum(r.output_tokens for r in results if r.ok) / wall, concurrency * statistics.median(decode or [0.0]), bad


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
    ratios: dict[str, list[float]] = {"json_schema": [], "auto": []}  # output tok/s / free's
    decode_ratios: dict[str, list[float]] = {"json_schema": [], "auto": []}  # decode tok/s / free's
    with server("llmserve", cmd, port, "/health") as (url, _):
        kinds = ["json_schema", "free"] + (["auto"] if asyncio.run(takes_tools(url)) else [])
        if "auto" not in kinds:
            print("this server refuses `tools`: the tool_choice=auto side is skipped")
        print(f"{'round':>5} " + " ".join(f"{k + ' tok/s':>17}" for k in kinds) + " " +
              " ".join(f"{k + ' / free':>18} {'(decode)':>9}" for k in kinds if k != "free"))
        asyncio.run(side(url, args.concurrency, args.concurrency, 16, "json_schema"))  # warm-up: compile, caches
        for i in range(args.rounds):
            order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]  # rotate who goes first
            rate, decode = {}, {}
            for kind in order:
                rate[kind], decode[kind], bad = asyncio.run(side(url, args.requests, args.concurrency,
                                                                 args.max_tokens, kind))
                if bad:
                    print(f"  {bad} {kind} requests failed or fell short of max_tokens")
            for kind in ratios:
                if kind in rate:
                    ratios[kind].append(rate[kind] / rate["free"])
                    decode_ratios[kind].append(decode[kind] / decode["free"])
            print(f"{i + 1:>5} " + " ".join(f"{rate[k]:>17.1f}" for k in kinds) + " " +
                  " ".join(f"{ratios[k][-1]:>18.3f} {decode_ratios[k][-1]:>9.3f}" for k in kinds if k != "free"))
    for kind, values in ratios.items():
        if values:
            print(f"{kind} / unconstrained, median of {args.rounds} rounds: output tok/s {statistics.median(values):.3f}, "
                  f"decode tok/s {statistics.median(decode_ratios[kind]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
