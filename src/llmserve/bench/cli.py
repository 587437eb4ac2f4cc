"""``llmserve bench``: arguments and the command (imported by ``llmserve.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from llmserve.bench.runner import DEFAULT_PROMPT


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", action="append", required=True, metavar="[LABEL=]URL",
                        help="Server base URL, optionally labelled (repeat to compare servers, run one after another).")
    parser.add_argument("--concurrency", type=_ints, default=(1, 8, 32), help="Comma-separated levels (default 1,8,32).")
    parser.add_argument("--requests", type=int, default=None, help="Requests per level (default: 4 x concurrency).")
    parser.add_argument("--max-tokens", type=int, default=128, help="max_tokens per request (default 128).")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="User message sent with every request.")
    parser.add_argument("--temperature", type=float, default=0.0, help="Sampling temperature (default 0).")
    parser.add_argument("--model", default=None, help="Model name (default: the first one each server lists).")
    parser.add_argument("--warmup", type=int, default=1, help="Unmeasured requests per server first (default 1).")
    parser.add_argument("--timeout", type=float, default=600.0, help="Seconds one request may take (default 600).")
    parser.add_argument("--api-key", default=None, help="Sent as 'Authorization: Bearer KEY'.")
    parser.add_argument("--extra-body", type=json.loads, default={}, help="JSON object merged into every request body.")
    parser.add_argument("--json", action="store_true", help="Print JSON results instead of a table.")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="Draw throughput and TTFT against concurrency.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bar (it goes to stderr).")


def run(args: argparse.Namespace) -> int:
    from llmserve.bench import report
    from llmserve.bench.runner import BenchParams, parse_target, run_sweep

    targets = [parse_target(u) for u in args.url]
    params = BenchParams(
        concurrency=args.concurrency, requests=args.requests, max_tokens=args.max_tokens, prompt=args.prompt,
        temperature=args.temperature, model=args.model, warmup=args.warmup, timeout=args.timeout,
        api_key=args.api_key, extra_body=args.extra_body,
    )
    try:
        with report.progress_bar(enabled=not args.no_progress) as (on_level_start, on_done):
            results = asyncio.run(run_sweep(targets, params, on_level_start=on_level_start, on_done=on_done))
    except Exception as exc:  # the server is down, lists no models, ...
        print(f"llmserve bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(report.to_json(results))
    else:
        report.print_table(results)
    if args.plot:
        print(f"plot written to {report.plot(results, args.plot)}", file=sys.stderr)
    return 1 if results and all(r.errors == r.requests for r in results) else 0
