"""The reliability tier (``make test-reliability``, run by ``make test``): live servers on the
bundled model under hostile input, a schema fuzzer, a soak, and injected engine faults."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.conftest import THREADS, free_port


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
