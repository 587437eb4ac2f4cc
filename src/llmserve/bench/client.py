"""One streamed chat completion against an OpenAI-compatible server, with its timings."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class RequestResult:
    ok: bool
    latency: float  # seconds from sending to the end of the stream
    ttft: float | None = None  # seconds to the first content
    itl: list[float] = field(default_factory=list)  # gaps between content chunks
    output_tokens: int = 0  # from the usage chunk, else one per content chunk
    error: str | None = None
    prompt_tokens: int | None = None  # from the usage chunk
    cached_tokens: int | None = None  # of those, the ones the server reused from its cache


@dataclass
class StreamClock:
    """Times one stream from its creation: first content, gaps between content chunks."""

    start: float = field(default_factory=time.perf_counter)
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    _last: float = 0.0

    def content(self) -> None:
        now = time.perf_counter()
        if self.ttft is None:
            self.ttft = now - self.start
        else:
            self.gaps.append(now - self._last)
        self._last = now
        self.chunks += 1

    def result(self, *, tokens: int | None = None, error: str | None = None,
               usage: dict[str, Any] | None = None) -> RequestResult:
        """Failed when ``error`` is given; ``tokens`` defaults to the content chunks seen;
        ``usage``, an OpenAI usage object, gives the prompt and cached token counts."""
        usage = usage or {}
        return RequestResult(error is None, time.perf_counter() - self.start, self.ttft, self.gaps,
                             self.chunks if tokens is None else tokens, error, usage.get("prompt_tokens"),
                             (usage.get("prompt_tokens_details") or {}).get("cached_tokens"))


def base_url(url: str) -> str:
    """``http://host:port``, whether or not the user wrote ``/v1`` after it."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def open_session(*, connections: int, timeout: float, api_key: str | None = None) -> aiohttp.ClientSession:
    """The HTTP client the bench drives servers with. aiohttp, whose C parser costs ~60 µs of
    client CPU per streamed token against httpx's ~160: the load generator shares the machine
    with the server it measures, so its cost is kept small."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # a connection per request: servers close idle keep-alive connections on their own terms
    # (llama-server after 5 requests), and a reused one that was just closed fails the request
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, force_close=True), headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout), read_bufsize=1 << 16,
    )


async def first_model(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(base_url(url) + "/v1/models") as r:
        r.raise_for_status()
        return (await r.json())["data"][0]["id"]


async def stream_chat(
    session: aiohttp.ClientSession,
    url: str,
    *,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    temperature: float = 0.0,
    extra_body: dict[str, Any] | None = None,
) -> RequestResult:
    """Sends one streaming chat request and times it; never raises for HTTP or network errors."""
    body = {
        "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
        "stream": True, "stream_options": {"include_usage": True}, **(extra_body or {}),
    }
    clock = StreamClock()
    usage: dict[str, Any] | None = None
    try:
        async with session.post(base_url(url) + "/v1/chat/completions", json=body) as r:
            if r.status != 200:
                text = (await r.read()).decode("utf-8", "replace")
                return clock.result(error=f"HTTP {r.status}: {text[:200]}")
            async for line in r.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    return clock.result(error=str(event["error"].get("message", event["error"]))[:200])
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or ():
                    if (choice.get("delta") or {}).get("content"):
                        clock.content()
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
        return clock.result(error=f"{type(exc).__name__}: {exc}"[:200])
    return clock.result(tokens=(usage or {}).get("completion_tokens"), usage=usage)
