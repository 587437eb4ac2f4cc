"""Rate limits shared by worker processes: ``llmserve serve --workers 2`` against a real Redis."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from llmserve.settings import Settings
from tests.conftest import app_client, fake_model, free_port
from tests.server.test_chat_api import assert_error

pytestmark = pytest.mark.live


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if check():
                return
        except (OSError, httpx.TransportError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not ready after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def redis_server() -> Iterator[tuple[str, subprocess.Popen]]:
    """A throwaway redis-server on a free loopback port (installed by scripts/ensure-redis.sh)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run scripts/ensure-redis.sh (make test does)")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        wait_for(client.ping, 10, "redis-server", proc)
        client.close()
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        stop(proc)


@pytest.fixture
def redis_url(redis_server) -> str:
    return redis_server[0]


@pytest.fixture
def workers_server(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSERVE_")}
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmserve", "serve", "--engine", "fake", "--workers", "2", "--port", str(port),
             "--redis-url", redis_url, "--api-key", "k1", "--api-key", "k2", "--rate-limit-rpm", "12",
             "--log-level", "info"],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        # /health answers as soon as one worker is up: wait until both say so
        wait_for(lambda: log.read_text().count("Application startup complete") == 2, 60, "two workers", proc)
        wait_for(lambda: httpx.get(url + "/health").status_code == 200, 60, "llmserve --workers 2", proc)
        yield url, log
    finally:
        stop(proc)


def test_limit_holds_across_two_workers(workers_server):
    url, log = workers_server

    def call(key: str) -> httpx.Response:  # a new connection each time, so both workers take some
        return httpx.post(url + "/chat", json={"text": "hello"}, headers={"authorization": f"Bearer {key}"},
                          timeout=30)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, ["k1"] * 30))
    codes = [r.status_code for r in results]
    assert codes.count(200) == 12 and codes.count(429) == 18, codes
    limited = next(r for r in results if r.status_code == 429)
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-limit-requests"] == "12"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    remaining = {int(r.headers["x-ratelimit-remaining-requests"]) for r in results if r.status_code == 200}
    assert 0 in remaining  # the 12th admitted request, whichever worker took it, saw the shared count

    # both worker processes served (each logs its pid), so the shared counter is what held the limit
    served_by = set(re.findall(r"\[pid (\d+)\] \[[0-9a-f]+\] simple chat", log.read_text()))
    assert len(served_by) == 2, log.read_text()[-3000:]

    assert call("k2").status_code == 200  # other keys are not affected


def test_redis_storage_in_process_and_redis_going_away_is_503(redis_server):
    url, proc = redis_server
    settings = Settings(api_keys=["k"], rate_limit_rpm=2, rate_limit_tpm=10_000, redis_url=url)
    with app_client(fake_model(), settings=settings) as client:
        headers = {"authorization": "Bearer k"}
        first = client.post("/chat", json={"text": "x"}, headers=headers)
        assert first.status_code == 200 and first.headers["x-ratelimit-remaining-requests"] == "1"
        second = client.post("/chat", json={"text": "x"}, headers=headers)
        assert second.headers["x-ratelimit-remaining-tokens"] == str(10_000 - first.json()["usage"]["total_tokens"])
        assert_error(client.post("/chat", json={"text": "x"}, headers=headers), 429)
        stop(proc)
        r = client.post("/chat", json={"text": "x"}, headers=headers)
        assert_error(r, 503, code="rate_limiter_unavailable")  # fails closed, never unlimited
        assert client.get("/health").status_code == 200
