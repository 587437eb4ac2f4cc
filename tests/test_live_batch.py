"""Batch jobs on a live ``llmserve serve`` subprocess over the bundled model, through the official
openai SDK: end to end, a real ``kill -9`` mid-batch then a restart (every custom_id exactly once),
and SIGTERM with live streams and a batch in flight."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import THREADS
from tests.server.test_drain import serve

pytestmark = pytest.mark.live
CHAT = "/v1/chat/completions"
MODEL = "SmolLM2-135M-Instruct.Q4_1"
FRANCE = "What is the capital of France? Answer in one word."
YES_NO = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}}}
ARGS = ["--threads", str(THREADS), "--parallel", "4", "--ctx-size", "4096"]


def request_line(custom_id: str, content: str, max_tokens: int, **body) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": {
        "model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **body}})


def submit(sdk: openai.OpenAI, lines: list[str]):
    source = sdk.files.create(file=open_jsonl(lines), purpose="batch")
    return sdk.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")


def open_jsonl(lines: list[str]):
    return ("in.jsonl", ("\n".join(lines) + "\n").encode())


def wait_status(sdk: openai.OpenAI, batch_id: str, status: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while (batch := sdk.batches.retrieve(batch_id)).status != status:
        assert batch.status not in ("failed", "cancelled", "expired"), batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.1)
    return batch


def output_ids(sdk: openai.OpenAI, batch) -> list[str]:
    rows = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            rows += [json.loads(x) for x in sdk.files.content(file_id).text.splitlines()]
    return [r["custom_id"] for r in rows]


def test_sdk_end_to_end_on_the_real_model(tmp_path):
    lines = [request_line("france", FRANCE, 8, temperature=0),
             request_line("short", "Count to three.", 4),
             request_line("too-long", "word " * 5000, 8),  # over the 1024-token slot: to the error file
             # structured output and tools: whatever the chat route supports, a batch line gets
             request_line("json", "Is Paris in France?", 30, temperature=0, response_format={
                 "type": "json_schema", "json_schema": {"name": "a", "schema": YES_NO}}),
             request_line("tool", "Weather in Paris?", 60, temperature=0, tools=[WEATHER], tool_choice="required")]
    with serve(ARGS, tmp_path / "data", tmp_path / "server.log") as (url, proc):
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        done = wait_status(sdk, submit(sdk, lines).id, "completed")
        assert (done.request_counts.completed, done.request_counts.failed) == (4, 1)
        out = {json.loads(x)["custom_id"]: json.loads(x) for x in sdk.files.content(done.output_file_id).text.splitlines()}
        assert "Paris" in out["france"]["response"]["body"]["choices"][0]["message"]["content"]
        assert out["short"]["response"]["body"]["usage"]["completion_tokens"] <= 4
        assert json.loads(out["json"]["response"]["body"]["choices"][0]["message"]["content"])["answer"] in ("yes", "no")
        [call] = out["tool"]["response"]["body"]["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather" and "city" in json.loads(call["function"]["arguments"])
        [error] = [json.loads(x) for x in sdk.files.content(done.error_file_id).text.splitlines()]
        assert error["custom_id"] == "too-long" and error["response"]["status_code"] == 400
        assert error["response"]["body"]["error"]["code"] == "context_length_exceeded"
        assert [b.id for b in sdk.batches.list()] == [done.id]


def test_kill_9_mid_batch_then_restart_loses_nothing(tmp_path):
    n = 32
    lines = [request_line(f"q{i}", f"Tell me a fact about the number {i}.", 12, temperature=0) for i in range(n)]
    data, log = tmp_path / "data", tmp_path / "server.log"
    with serve(ARGS, data, log) as (url, proc):
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        batch = submit(sdk, lines)
        while sdk.batches.retrieve(batch.id).request_counts.completed < 6:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-batch: lines in flight, results being written
        proc.wait()
    with serve(ARGS, data, log) as (url, proc):
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        resumed = sdk.batches.retrieve(batch.id)
        assert resumed.status == "in_progress" and 6 <= resumed.request_counts.completed < n
        done = wait_status(sdk, batch.id, "completed")
        ids = output_ids(sdk, done)
        assert sorted(ids) == sorted(f"q{i}" for i in range(n))  # each exactly once
        assert done.request_counts.completed == n and done.request_counts.failed == 0


def test_sigterm_with_live_streams_and_a_batch_in_flight(tmp_path):
    n = 24
    lines = [request_line(f"b{i}", f"Write a sentence about the colour number {i}.", 24) for i in range(n)]
    data, log = tmp_path / "data", tmp_path / "server.log"
    args = [*ARGS, "--shutdown-timeout", "3"]
    with serve(args, data, log) as (url, proc):
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        batch = submit(sdk, lines)
        while sdk.batches.retrieve(batch.id).request_counts.completed < 2:
            time.sleep(0.05)
        results: dict[str, list] = {}

        def stream(name: str, max_tokens: int) -> None:
            events = results.setdefault(name, [])
            with httpx.stream("POST", url + CHAT, timeout=120, json={
                    "model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
                    "max_tokens": max_tokens, "ignore_eos": True, "stream": True}) as r:
                for raw in r.iter_lines():
                    if raw.startswith("data: "):
                        events.append(raw[6:] if raw == "data: [DONE]" else json.loads(raw[6:]))

        threads = [threading.Thread(target=stream, args=("short", 8)),
                   threading.Thread(target=stream, args=("long", 900))]  # ~900 steps: past the 3 s
        for t in threads:
            t.start()
        while not all(results.get(k) for k in ("short", "long")):
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        for t in threads:
            t.join(30)
        short, long = results["short"], results["long"]
        assert short[-1] == "[DONE]" and short[-2]["choices"][0]["finish_reason"] == "length"
        assert long[-1] == "[DONE]" and long[-2]["error"]["code"] == "server_shutting_down"
    assert "Traceback" not in log.read_text()
    with serve(ARGS, data, log) as (url, proc):
        sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        assert sdk.batches.retrieve(batch.id).status == "in_progress"
        done = wait_status(sdk, batch.id, "completed")
        assert sorted(output_ids(sdk, done)) == sorted(f"b{i}" for i in range(n))
