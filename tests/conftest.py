"""Shared fixtures: fake-engine apps (fast tier), the bundled model (real tier), live servers."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from llmserve.chat_model import AsyncChatModel
from llmserve.server.app import create_app
from llmserve.settings import ModelSettings, Settings

# Inference threads for the real-model tiers. One: the test process (and a live server, and the
# client) share the 2 cores, and llama.cpp's spinning OpenMP barriers degrade badly when its
# threads outnumber the free cores (seen here: seconds per decode step under such load).
THREADS = int(os.environ.get("LLMSERVE_TEST_THREADS", "1"))
# batch jobs of every app and server the tests start live here, never in the user's data directory
if "LLMSERVE_DATA_DIR" not in os.environ:
    os.environ["LLMSERVE_DATA_DIR"] = tempfile.mkdtemp(prefix="llmserve-test-data-")
    atexit.register(shutil.rmtree, os.environ["LLMSERVE_DATA_DIR"], ignore_errors=True)
T = TypeVar("T")


# -- every status an HTTP test gets must be documented in /openapi.json ------------------------------
PROVOKED: set[tuple[str, str, int]] = set()  # (method, path, status) seen by app_client and ThreadServer
NOT_RESPONSES = {499}  # logged when the client has gone: no client ever receives it


class StatusRecorder:
    """ASGI middleware (outermost) noting the status of every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def noting(message):
            if message["type"] == "http.response.start":
                PROVOKED.add((scope["method"], scope["path"], message["status"]))
            await send(message)

        await self.app(scope, receive, noting)


def recorded(app):
    app.add_middleware(StatusRecorder)
    return app


def undocumented(provoked: set[tuple[str, str, int]]) -> list[str]:
    """Provoked statuses of routes in /openapi.json that it does not document."""
    doc = create_app(Settings(engine="fake")).openapi()
    out = []
    for method, path, status in sorted(provoked):
        op = doc["paths"].get(path, {}).get(method.lower())
        if op is not None and status not in NOT_RESPONSES and str(status) not in op["responses"]:
            out.append(f"{method} {path} answered {status}")
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    missing = undocumented(PROVOKED)
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter:
            reporter.ensure_newline()
        for line in ["statuses the tests provoked that /openapi.json does not document:", *missing]:
            reporter.write_line(line, red=True) if reporter else print(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def fake_model(name: str = "fake-model", **options: Any) -> AsyncChatModel:
    fields = ("parallel", "max_queue", "queue_timeout", "allow_special_tokens_in_content", "watchdog_timeout")
    settings_fields = {k: options.pop(k) for k in fields if k in options}
    return AsyncChatModel(settings=ModelSettings(name=name, engine="fake", options=options, **settings_fields))


def wait_healthy(client: TestClient | httpx.Client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.02)
    raise TimeoutError("server did not become healthy")


@contextmanager
def app_client(*models: AsyncChatModel, settings: Settings | None = None, wait: bool = True) -> Iterator[TestClient]:
    app = recorded(create_app(settings or Settings(), models=list(models) or [fake_model()]))
    with TestClient(app, raise_server_exceptions=False) as client:
        if wait:
            wait_healthy(client)
        yield client


@pytest.fixture
def make_client() -> Callable[..., Any]:
    """``with make_client(fake_model(reply=...)) as client:`` — a TestClient over fake engines."""
    return app_client


@pytest.fixture
def client() -> Iterator[TestClient]:
    with app_client(fake_model()) as c:
        yield c


# -- the bundled model ----------------------------------------------------------------------------
def llama_settings(**overrides: Any) -> ModelSettings:
    return ModelSettings(**{"engine": "llamacpp", "parallel": 8, "threads": THREADS, "ctx_size": 8192, **overrides})


@pytest.fixture(scope="session")
def bundled_path() -> Path:
    from llmserve.models import bundled_model_path

    return bundled_model_path()


@pytest.fixture(scope="session")
def llama_client() -> Iterator[TestClient]:
    """One in-process app over the real llama.cpp engine for the whole session."""
    model = AsyncChatModel(settings=llama_settings(name="smollm2"))
    with app_client(model) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn in a thread of the test process: a real socket, and the engine is reachable.

    ``call(coro)`` runs a coroutine on the server's own event loop (where the engines live), so
    in-process tests can share the engine that serves HTTP.
    """

    def __init__(self, app, port: int):
        self.server = uvicorn.Server(uvicorn.Config(recorded(app), host="127.0.0.1", port=port, log_level="warning"))
        self.url = f"http://127.0.0.1:{port}"
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        with httpx.Client(base_url=self.url) as c:
            deadline = time.monotonic() + 300  # a vLLM engine loads in ~60 s here, more on a busy machine
            while time.monotonic() < deadline:
                try:
                    if c.get("/health").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise TimeoutError("thread server did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def llama_server() -> Iterator[ThreadServer]:
    """The real engine behind a real socket, in this process (to watch the engine directly)."""
    model = AsyncChatModel(settings=llama_settings(name="smollm2"))
    with ThreadServer(create_app(Settings(), models=[model]), free_port()) as server:
        server.model = model
        yield server


@pytest.fixture(scope="session")
def live_server() -> Iterator[str]:
    """``llmserve serve`` as a subprocess on the bundled model, as a user would run it."""
    with serve() as (url, _proc):
        yield url


@contextmanager
def serve(*args: str, timeout: float = 90.0) -> Iterator[tuple[str, subprocess.Popen]]:
    """``llmserve serve ARGS`` on a free loopback port, as a user runs it; yields (url, process)."""
    port = free_port()
    env = {**os.environ, "LLMSERVE_THREADS": str(THREADS)}
    log = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads it until the end
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmserve", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )
    proc.log = log
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {server_log(proc)[-2000:]}")
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def server_log(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read().decode("utf-8", "replace")
