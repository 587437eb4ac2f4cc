"""The Ray tier: one ``llmserve serve --ray --replicas 2`` subprocess (a local Ray cluster) per module."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import psutil
import pytest

from tests.conftest import THREADS, free_port

API_KEY = "sk-ray-test"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("ray") is None:  # the llmserve[ray] extra is not installed here
        skip = pytest.mark.skip(reason="ray is not installed (pip install -r requirements/ray.txt)")
        for item in items:
            if "ray" in item.keywords:
                item.add_marker(skip)


@dataclass
class RayServer:
    proc: subprocess.Popen
    url: str
    log: str
    descendants: set[int] = field(default_factory=set)

    def processes(self) -> list[psutil.Process]:
        """The driver and everything it started (GCS, raylet, agents, workers, replicas)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.descendants.update(p.pid for p in procs)
        return procs

    def replica_processes(self) -> list[psutil.Process]:
        out = []
        for p in self.processes():
            try:  # Ray sets the process title (ray::ServeReplica:APP:model-NAME...)
                title = " ".join(p.cmdline()) + " " + p.name()
            except psutil.Error:
                continue
            if "ServeReplica" in title and "model-" in title:
                out.append(p)
        return out

    def stop(self, timeout: float = 60.0) -> int:
        self.processes()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def start_ray_server(tmp_path, *args: str, timeout: float = 240.0) -> RayServer:
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "LLMSERVE_THREADS": str(THREADS)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llmserve", "serve", "--ray", "--port", str(port),
                                 "--log-level", "warning", *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    server = RayServer(proc, f"http://127.0.0.1:{port}", str(log))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {open(log).read()[-3000:]}")
        try:
            if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                server.processes()
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    raise TimeoutError(f"ray server did not start: {open(log).read()[-3000:]}")


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory) -> Iterator[RayServer]:
    """2 replicas x 2 slots of 1 thread; 1 request may wait for a slot (``--max-queued 1``); an API
    key; replicas send tokens every 0.5 s after the first (so that batching shows in the metrics)."""
    server = start_ray_server(tmp_path_factory.mktemp("ray"), "--replicas", "2", "--parallel", "2",
                              "--max-queued", "1", "--threads", str(THREADS), "--ctx-size", "4096",
                              "--api-key", API_KEY, "--ray-stream-interval", "0.5")
    try:
        yield server
    finally:
        ensure_stopped(server)


def ensure_stopped(server: RayServer) -> None:
    """SIGTERM if still running; then never leave a Ray process behind, whatever happened."""
    if server.proc.poll() is None:
        try:
            server.stop()
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    for pid in server.descendants:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
        except psutil.Error:
            pass
