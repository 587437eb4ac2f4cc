"""Graceful SIGTERM on a real ``llmserve serve`` subprocess (fake engine with slow tokens, so the
timings are the test's own): /health 503 draining at once, new requests refused, streams that
fit in --shutdown-timeout complete, the others end with the server_shutting_down event and
[DONE], batch lines in flight go back to pending, exit status 0, no traceback. Also with --workers 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.live
CHAT = "/v1/chat/completions"


@contextmanager
def serve(args: list[str], data_dir: Path, log: Path, *, workers: int = 1) -> Iterator[tuple[str, subprocess.Popen]]:
    """``llmserve serve ARGS`` on a free port, healthy (all workers up) before it is handed over."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMSERVE_")}
    env["LLMSERVE_DATA_DIR"] = str(data_dir)
    with log.open("a") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "llmserve", "serve", "--port", str(port), *args,
                                 "--workers", str(workers), "--log-level", "info"],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "server did not start"
            try:
                ready = httpx.get(url + "/health").status_code == 200
            except httpx.TransportError:
                ready = False
            if ready and log.read_text().count("Application startup complete") >= workers:
                break
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def fake_config(tmp_path: Path, delay: float) -> Path:
    path = tmp_path / "llmserve.yaml"
    path.write_text(f"models:\n  - {{name: fake-model, engine: fake, parallel: 16, options: {{token_delay: {delay}}}}}\n")
    return path


class Stream(threading.Thread):
    """One streamed chat completion of ``n`` tokens (ignore_eos), read to its end."""

    def __init__(self, url: str, n: int):
        super().__init__(daemon=True)
        self.url, self.n = url, n
        self.events: list = []
        self.started = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "go"}], "max_tokens": self.n,
                "ignore_eos": True, "stream": True}
        try:
            with httpx.stream("POST", self.url + CHAT, json=body, timeout=60) as r:
                for raw in r.iter_lines():
                    if raw.startswith("data: "):
                        data = raw[len("data: "):]
                        self.events.append(data if data == "[DONE]" else json.loads(data))
                        self.started.set()
        except BaseException as exc:  # noqa: BLE001 — the test reports it
            self.error = exc
            self.started.set()

    @property
    def finish(self) -> str | None:
        return next((e["choices"][0]["finish_reason"] for e in self.events
                     if isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]), None)


def test_sigterm_drains_streams_and_exits_cleanly(tmp_path):
    log = tmp_path / "server.log"
    args = ["--config", str(fake_config(tmp_path, 0.02)), "--shutdown-timeout", "2"]
    with serve(args, tmp_path / "data", log) as (url, proc):
        short = [Stream(url, 40) for _ in range(2)]  # ~0.8 s: fits in the 2 s timeout
        long = [Stream(url, 1000) for _ in range(2)]  # ~20 s: does not
        for s in short + long:
            s.start()
        for s in short + long:
            assert s.started.wait(10)
        blocking = {}
        waiter = threading.Thread(target=lambda: blocking.update(r=httpx.post(url + CHAT, timeout=60, json={
            "model": "fake-model", "messages": [{"role": "user", "content": "go"}], "max_tokens": 1000,
            "ignore_eos": True})), daemon=True)
        waiter.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"
        refused = httpx.post(url + CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
        assert refused.headers["retry-after"]
        assert proc.wait(30) == 0
        elapsed = time.monotonic() - t0
        for s in short + long:
            s.join(10)
            assert s.error is None, s.error
            assert s.events[-1] == "[DONE]"
        assert all(s.finish == "length" for s in short)
        for s in long:
            assert s.finish is None
            assert s.events[-2]["error"]["code"] == "server_shutting_down"
        waiter.join(10)
        assert blocking["r"].status_code == 503
        assert blocking["r"].json()["error"]["code"] == "server_shutting_down"
        assert elapsed < 15  # the timeout, not the 20 s the long streams wanted
    text = log.read_text()
    assert "Traceback" not in text and "CancelledError" not in text, text[-3000:]


def test_second_signal_stops_at_once(tmp_path):
    log = tmp_path / "server.log"
    args = ["--config", str(fake_config(tmp_path, 0.02)), "--shutdown-timeout", "60"]
    with serve(args, tmp_path / "data", log) as (url, proc):
        stream = Stream(url, 2000)
        stream.start()
        assert stream.started.wait(10)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # draining: up to 60 s
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def test_sigterm_with_two_workers(tmp_path):
    log = tmp_path / "server.log"
    args = ["--config", str(fake_config(tmp_path, 0.02)), "--shutdown-timeout", "2"]
    with serve(args, tmp_path / "data", log, workers=2) as (url, proc):
        # both workers serve the Files and Batch routes from one store; one of them runs the batches
        import openai

        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": {
            "model": "fake-model", "messages": [{"role": "user", "content": "go"}], "max_tokens": 3}})
            for i in range(20)]
        source = sdk.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch")
        batch = sdk.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
        deadline = time.monotonic() + 30
        while (done := sdk.batches.retrieve(batch.id)).status != "completed":  # polls reach either worker
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rows = sdk.files.content(done.output_file_id).text.splitlines()
        assert sorted(json.loads(x)["custom_id"] for x in rows) == sorted(f"r{i}" for i in range(20))
        assert log.read_text().count("this process runs batch jobs") == 1
        streams = [Stream(url, 40) for _ in range(3)] + [Stream(url, 1000) for _ in range(3)]
        for s in streams:
            s.start()
        for s in streams:
            assert s.started.wait(10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for s in streams:
            s.join(10)
            assert s.error is None and s.events[-1] == "[DONE]"
        assert [s.finish for s in streams[:3]] == ["length"] * 3
        assert all(s.events[-2]["error"]["code"] == "server_shutting_down" for s in streams[3:])
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert text.count("draining") >= 2  # each worker drained


def test_batch_lines_in_flight_go_back_to_pending_and_resume(tmp_path):
    """A batch in flight at SIGTERM: the lines done are kept, the others run after the restart;
    the output has every custom_id exactly once."""
    import openai

    log = tmp_path / "server.log"
    data = tmp_path / "data"
    args = ["--config", str(fake_config(tmp_path, 0.05)), "--shutdown-timeout", "1"]
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": {
        "model": "fake-model", "messages": [{"role": "user", "content": "go"}], "max_tokens": 20,
        "ignore_eos": True}}) for i in range(60)]
    with serve(args, data, log) as (url, proc):
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        source = sdk.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch")
        batch = sdk.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
        while sdk.batches.retrieve(batch.id).request_counts.completed < 16:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    with serve(args, data, log) as (url, proc):
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        middle = sdk.batches.retrieve(batch.id)
        assert middle.status == "in_progress" and 16 <= middle.request_counts.completed < 60
        deadline = time.monotonic() + 60
        while (done := sdk.batches.retrieve(batch.id)).status != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ids = [json.loads(x)["custom_id"] for x in sdk.files.content(done.output_file_id).text.splitlines()]
        assert sorted(ids) == sorted(f"r{i}" for i in range(60))
        assert done.request_counts.completed == 60
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert "Traceback" not in log.read_text()
