"""``llmserve batch run`` (in process, the real model) and ``batch list | status`` against a server."""

from __future__ import annotations

import json
import subprocess
import sys

import openai
import pytest

from tests.conftest import THREADS
from tests.server.test_drain import fake_config, serve

CHAT = "/v1/chat/completions"


def chat_line(custom_id: str, content: str, **body) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT,
                       "body": {"messages": [{"role": "user", "content": content}], **body}})


def llmserve(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmserve", *args], capture_output=True, text=True, timeout=timeout)


def test_batch_run_in_process_on_the_real_model(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([
        chat_line("france", "What is the capital of France? Answer in one word.", temperature=0, max_tokens=8),
        chat_line("other-model", "hi", model="no-such-model"),
        chat_line("short", "Say hello.", max_tokens=3),
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    r = llmserve("batch", "run", str(source), "-o", str(out), "--threads", str(THREADS), "--parallel", "2",
                 "--ctx-size", "2048")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [row["custom_id"] for row in rows] == ["france", "other-model", "short"]  # input order
    assert "Paris" in rows[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert rows[1]["response"]["status_code"] == 404
    assert rows[2]["response"]["body"]["usage"]["completion_tokens"] <= 3
    assert "2 succeeded, 1 failed" in r.stderr


def test_batch_run_rejects_an_invalid_file(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(chat_line("a", "x") + "\n{oops\n")
    r = llmserve("batch", "run", str(source), "-o", str(tmp_path / "out.jsonl"), "--engine", "fake")
    assert r.returncode == 2 and "line 2 is not valid JSON" in r.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.live
def test_batch_list_and_status_against_a_server(tmp_path):
    args = ["--config", str(fake_config(tmp_path, 0.0)), "--api-key", "k"]
    with serve(args, tmp_path / "data", tmp_path / "server.log") as (url, proc):
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="k")
        source = sdk.files.create(file=("in.jsonl", chat_line("a", "x", model="fake-model").encode()), purpose="batch")
        batch = sdk.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
        listing = llmserve("batch", "list", "--url", url, "--api-key", "k", timeout=60)
        assert listing.returncode == 0 and batch.id in listing.stdout
        status = llmserve("batch", "status", batch.id, "--url", url, "--api-key", "k", "--json", timeout=60)
        assert status.returncode == 0 and json.loads(status.stdout)["id"] == batch.id
        missing = llmserve("batch", "status", "batch_nope", "--url", url, "--api-key", "k", timeout=60)
        assert missing.returncode == 1 and "No such Batch" in missing.stderr
        denied = llmserve("batch", "list", "--url", url, timeout=60)
        assert denied.returncode == 1 and "API key" in denied.stderr
