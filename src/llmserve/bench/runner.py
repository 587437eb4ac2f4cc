"""Concurrency sweeps: for each server, for each level, N streamed requests with C in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from llmserve.bench.client import RequestResult, first_model, open_session, stream_chat

DEFAULT_PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


@dataclass(frozen=True)
class Target:
    label: str
    url: str


def parse_target(spec: str) -> Target:
    """``LABEL=URL`` or a bare URL (labelled with its host:port)."""
    label, sep, url = spec.partition("=")
    if sep and not label.startswith(("http://", "https://")):
        return Target(label, url)
    return Target(spec.split("://", 1)[-1].rstrip("/"), spec)


@dataclass(frozen=True)
class BenchParams:
    concurrency: tuple[int, ...] = (1, 8, 32)
    requests: int | None = None  # per level; None: 4 x concurrency
    max_tokens: int = 128
    prompt: str = DEFAULT_PROMPT
    prompts: tuple[str, ...] = ()  # a prompt set, cycled per request; overrides ``prompt``
    temperature: float = 0.0
    model: str | None = None  # None: the first model the server lists
    warmup: int = 1  # requests per server before measuring
    timeout: float = 600.0
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)

    def n_requests(self, concurrency: int) -> int:
        return self.requests if self.requests is not None else 4 * concurrency

    def messages(self, index: int) -> list[dict[str, str]]:
        prompt = self.prompts[index % len(self.prompts)] if self.prompts else self.prompt
        return [{"role": "user", "content": prompt}]


@dataclass
class LevelResult:
    label: str
    url: str
    model: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    output_tokens: int
    output_tok_s: float
    requests_per_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    e2e_p50_s: float | None
    error_samples: list[str] = field(default_factory=list)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(target: Target, model: str, concurrency: int, results: list[RequestResult], duration: float) -> LevelResult:
    ok = [r for r in results if r.ok]
    ms = lambda v: None if v is None else v * 1000  # noqa: E731
    tokens = sum(r.output_tokens for r in ok)
    return LevelResult(
        label=target.label, url=target.url, model=model, concurrency=concurrency, requests=len(results),
        errors=len(results) - len(ok), duration_s=duration, output_tokens=tokens,
        output_tok_s=tokens / duration if duration > 0 else 0.0,
        requests_per_s=len(ok) / duration if duration > 0 else 0.0,
        ttft_p50_ms=ms(percentile([r.ttft for r in ok if r.ttft is not None], 50)),
        ttft_p99_ms=ms(percentile([r.ttft for r in ok if r.ttft is not None], 99)),
        itl_p50_ms=ms(percentile([g for r in ok for g in r.itl], 50)),
        e2e_p50_s=percentile([r.latency for r in ok], 50),
        error_samples=sorted({r.error for r in results if r.error})[:3],
    )


async def drive(send: Callable[[int], Awaitable[RequestResult]], total: int, concurrency: int,
                on_done: Callable[[RequestResult], None] | None = None) -> tuple[list[RequestResult], float]:
    """Calls ``send(index)`` for ``total`` indexes, never more than ``concurrency`` in flight;
    returns the results and the wall time."""
    results: list[RequestResult] = []
    indexes = iter(range(total))

    async def worker() -> None:
        for index in indexes:
            result = await send(index)
            results.append(result)
            if on_done is not None:
                on_done(result)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    return results, time.perf_counter() - start


async def run_level(client: aiohttp.ClientSession, target: Target, model: str, concurrency: int, params: BenchParams,
                    on_done: Callable[[RequestResult], None] | None = None) -> LevelResult:
    """``params.n_requests(concurrency)`` requests, never more than ``concurrency`` in flight."""

    def send(index: int) -> Awaitable[RequestResult]:
        return stream_chat(client, target.url, model=model, messages=params.messages(index),
                           max_tokens=params.max_tokens, temperature=params.temperature, extra_body=params.extra_body)

    results, duration = await drive(send, params.n_requests(concurrency), concurrency, on_done)
    return summarize(target, model, concurrency, results, duration)


async def run_sweep(
    targets: Sequence[Target],
    params: BenchParams,
    *,
    on_level_start: Callable[[Target, int, int], None] | None = None,
    on_done: Callable[[RequestResult], None] | None = None,
) -> list[LevelResult]:
    """Every target, one after another (never concurrently: they would share the machine),
    every concurrency level in order."""
    out: list[LevelResult] = []
    for target in targets:
        async with open_session(connections=max(params.concurrency), timeout=params.timeout,
                                api_key=params.api_key) as client:
            model = params.model or await first_model(client, target.url)
            for i in range(params.warmup):
                await stream_chat(client, target.url, model=model, messages=params.messages(i),
                                  max_tokens=min(params.max_tokens, 16), extra_body=params.extra_body)
            for concurrency in params.concurrency:
                if on_level_start is not None:
                    on_level_start(target, concurrency, params.n_requests(concurrency))
                out.append(await run_level(client, target, model, concurrency, params, on_done))
    return out
