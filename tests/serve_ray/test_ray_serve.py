"""``llmserve serve --ray --replicas 2`` on the bundled model: the same API through Ray Serve.

One cluster for the module (tests run in file order: the replica kill and SIGTERM come last).
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import re
import shutil
import subprocess
import threading
import time

import httpx
import psutil
import pytest
from websockets.sync.client import connect

from tests.serve_ray.conftest import AUTH

pytestmark = pytest.mark.ray

MODEL = "SmolLM2-135M-Instruct.Q4_1"
QUESTIONS = ["What is the capital of France? Answer in one word.", "Name a primary color.", "What is 2 + 2?",
             "Which animal says moo?"]


def ask(url: str, messages: list[dict], **extra) -> dict:
    body = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 24, **extra}
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=180, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def stream(url: str, messages: list[dict], *, until: threading.Event | None = None,
           events: list[dict] | None = None, **extra) -> tuple[str, list[dict], int]:
    """The streamed text, every SSE event (parsed; [DONE] as {"done": True}) and the status.
    ``events``: a list to fill as events arrive; ``until``: stop reading (and leave) once it is set."""
    body = {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 24, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    events = [] if events is None else events
    parts = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=180, headers=AUTH) as r:
        if r.status_code != 200:
            r.read()
            return "", [r.json()], r.status_code
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                events.append({"done": True})
                continue
            event = json.loads(data)
            events.append(event)
            for choice in event.get("choices", []):
                parts.append(choice["delta"].get("content") or "")
            if until is not None and until.is_set():
                break
    return "".join(parts), events, 200


def content_events(events: list[dict]) -> int:
    return sum(1 for e in events for c in e.get("choices", []) if c["delta"].get("content"))


def replica_counts(url: str, metric: str = "llmserve:replica_request_success_total") -> dict[str, float]:
    """Per replica: the sum of ``metric`` (from the replicas' pushed metrics, merged by /metrics)."""
    text = httpx.get(url + "/metrics", timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            replica = re.search(r'replica="([^"]+)"', line).group(1)
            out[replica] = out.get(replica, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def wait_for(predicate, timeout: float = 30.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def test_concurrent_streams_are_correct_and_use_both_replicas(ray_server):
    url = ray_server.url
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        streamed = list(pool.map(lambda m: stream(url, m), conversations))
    for (text, events, status), messages in zip(streamed, conversations):
        assert status == 200
        assert events[-1] == {"done": True}
        assert not any("error" in e for e in events)
        finish = [c["finish_reason"] for e in events for c in e.get("choices", []) if c["finish_reason"]]
        assert len(finish) == 1
        usage = [e["usage"] for e in events if e.get("usage")]
        assert usage and usage[-1]["completion_tokens"] > 0
        # greedy: the same answer as the same question asked alone, without streaming
        alone = ask(url, messages)
        assert text == alone["choices"][0]["message"]["content"] and text.strip()
    assert "Paris" in streamed[0][0]
    served = wait_for(lambda: (c := replica_counts(url)) and len(c) == 2 and all(v > 0 for v in c.values()) and c)
    assert served and len(served) == 2, f"answers did not come from both replicas: {served}"


def test_conversation_turns_hit_the_replica_holding_their_prefix(ray_server):
    url = ray_server.url
    long_user = "Here is some context about my garden: " + "tomatoes, basil, peppers, and beans. " * 12
    conversations = [[{"role": "system", "content": f"You are assistant number {i}."},
                      {"role": "user", "content": long_user + f" Question {i}: what should I plant next?"}]
                     for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = list(pool.map(lambda m: ask(url, m), conversations))
    seconds = []
    for messages, answer in zip(conversations, first):
        seconds.append(messages + [{"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
                                   {"role": "user", "content": "And after that?"}])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        second = list(pool.map(lambda m: ask(url, m), seconds))
    for answer1, answer2 in zip(first, second):
        prompt1 = answer1["usage"]["prompt_tokens"]
        cached = answer2["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
        # the whole first prompt (and more) was already in that replica's KV cache
        assert cached >= prompt1 - 16, (prompt1, answer2["usage"])


def test_a_full_queue_is_503_with_retry_after_before_any_200(ray_server):
    url = ray_server.url
    release = threading.Event()
    live: list[list[dict]] = [[] for _ in range(5)]

    def occupy(i):
        return stream(url, [{"role": "user", "content": f"Count slowly to one hundred, {i}."}],
                      max_tokens=1500, ignore_eos=True, until=release, events=live[i])

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        busy = [pool.submit(occupy, i) for i in range(5)]  # 4 slots and the 1 queue place
        try:
            # the 4 slots stream; the 5th request, sent with them, waits in the queue
            assert wait_for(lambda: sum(1 for e in live if e) == 4, timeout=120)
            time.sleep(0.5)
            r = wait_for(lambda: (resp := httpx.post(url + "/v1/chat/completions", timeout=60, json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "max_tokens": 4}, headers=AUTH)).status_code == 503 and resp, timeout=60)
        finally:
            release.set()  # the occupying streams leave (their slots free up; the queued one runs)
        assert r, "no 503 while every slot and the queue were taken"
        assert r.headers["retry-after"] == "1"
        err = r.json()["error"]
        assert err["type"] == "server_overloaded" and err["code"] == "overloaded"
        results = [f.result() for f in busy]
    assert all(status == 200 and events for _, events, status in results)  # the queued one got its turn
    assert all(not any("error" in e for e in events) for _, events, _ in results)


def test_simple_api_websocket_and_keys_through_serve(ray_server):
    url = ray_server.url
    r = httpx.post(url + "/chat", json={"text": "What is the capital of France? Answer in one word.",
                                        "temperature": 0, "max_tokens": 8}, headers=AUTH, timeout=180)
    assert r.status_code == 200 and "Paris" in r.json()["result"]
    denied = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    ws_url = url.replace("http://", "ws://") + "/ws"
    with connect(ws_url, additional_headers=AUTH, open_timeout=60) as ws:
        ws.send(json.dumps({"text": "What is the capital of France? Answer in one word.", "temperature": 0,
                            "max_tokens": 8}))
        parts = []
        while True:
            msg = json.loads(ws.recv(timeout=180))
            if msg["type"] != "token":
                break
            parts.append(msg["text"])
    assert msg["type"] == "end" and "Paris" in "".join(parts)


def test_structured_output_and_tool_calls_cross_the_handle(ray_server):
    """The constraint is built in the ingress and enforced by the replica's engine."""
    url = ray_server.url
    out = ask(url, [{"role": "user", "content": "Describe Paris as JSON with a name and a country."}],
              response_format={"type": "json_object"}, max_tokens=60)
    assert out["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(out["choices"][0]["message"]["content"]), dict)
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    out = ask(url, [{"role": "user", "content": "What is the weather in Paris?"}], tools=[weather],
              tool_choice="required", max_tokens=60)
    calls = out["choices"][0]["message"]["tool_calls"]
    assert out["choices"][0]["finish_reason"] == "tool_calls" and calls[0]["function"]["name"] == "get_weather"
    assert isinstance(json.loads(calls[0]["function"]["arguments"])["city"], str)


def test_a_client_that_leaves_frees_its_slot_in_the_replica(ray_server):
    url = ray_server.url
    cancelled_before = sum(replica_counts(url, "llmserve:replica_requests_cancelled_total").values())
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a very long story."}],
            "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=180, headers=AUTH) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        while not next(lines).startswith("data: {"):
            pass
    # the replica's engine aborted the request (it would run for a minute or more otherwise)
    assert wait_for(lambda: sum(replica_counts(url, "llmserve:replica_requests_cancelled_total").values())
                    > cancelled_before, timeout=30)
    assert wait_for(lambda: sum(replica_counts(url, "llmserve:replica_num_requests_running").values()) == 0,
                    timeout=30)


def test_metrics_have_replica_series_and_serve_overhead(ray_server):
    before = replica_counts(ray_server.url, "llmserve:replica_stream_messages_total")
    tokens_before = replica_counts(ray_server.url, "llmserve:replica_generation_tokens_total")
    _, events, _ = stream(ray_server.url, [{"role": "user", "content": "Tell a story."}], max_tokens=64,
                          ignore_eos=True)
    assert events[-1] == {"done": True}

    def grown():
        tokens = replica_counts(ray_server.url, "llmserve:replica_generation_tokens_total")
        return sum(tokens.values()) - sum(tokens_before.values()) >= 64 and tokens

    tokens = wait_for(grown)
    messages = replica_counts(ray_server.url, "llmserve:replica_stream_messages_total")
    sent = sum(messages.values()) - sum(before.values())
    generated = sum(tokens.values()) - sum(tokens_before.values())
    assert 2 <= sent <= generated / 2, (sent, generated)  # tokens crossed the handle in lists, not one by one
    text = httpx.get(ray_server.url + "/metrics", timeout=30).text
    assert f'llmserve:serve_overhead_seconds_count{{model_name="{MODEL}"}}' in text
    count = float(re.search(r'llmserve:serve_overhead_seconds_count\{[^}]*\} (\S+)', text).group(1))
    assert count >= 4
    replicas = set(re.findall(r'llmserve:replica_time_to_first_token_seconds_count\{[^}]*replica="([^"]+)"', text))
    assert len(replicas) == 2
    # the ingress's own series as for a plain server (a refused request was counted)
    assert re.search(r'llmserve:requests_rejected_total\{model_name="[^"]*",reason="queue_full"\} [1-9]', text)


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    """(address, pid) of every TCP socket in LISTEN state owned by ``pids`` (``ss -ltnp``)."""
    out = []
    if shutil.which("ss"):
        lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
        for line in lines:
            cols = line.split()
            for pid in map(int, re.findall(r"pid=(\d+)", line)):
                if pid in pids:
                    out.append((cols[3].rsplit(":", 1)[0].strip("[]"), pid))
    else:  # no iproute2: the same question through psutil
        for pid in pids:
            try:
                for c in psutil.Process(pid).net_connections("tcp"):
                    if c.status == psutil.CONN_LISTEN:
                        out.append((c.laddr.ip, pid))
            except psutil.Error:
                pass
    return out


def test_nothing_listens_beyond_loopback(ray_server):
    pids = {p.pid for p in ray_server.processes()}
    sockets = _listening(pids)
    assert sockets, "found no listening socket of the server at all"
    for address, pid in sockets:
        ip = ipaddress.ip_address(address.removeprefix("::ffff:")) if address not in ("*", "0.0.0.0") else None
        assert ip is not None and ip.is_loopback, f"pid {pid} ({psutil.Process(pid).name()}) listens on {address}"
    port = int(ray_server.url.rsplit(":", 1)[1])
    assert httpx.get(ray_server.url + "/health").status_code == 200 and port > 0


def test_a_killed_replica_ends_only_its_streams_and_is_replaced(ray_server):
    url = ray_server.url
    release = threading.Event()
    live: list[list[dict]] = [[] for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        streams = [pool.submit(stream, url, [{"role": "user", "content": f"Tell a long story, part {i}."}],
                               max_tokens=1500, ignore_eos=True, until=release, events=live[i])
                   for i in range(4)]  # 2 slots on each replica: both replicas stream
        try:
            assert wait_for(lambda: all(live), timeout=120), "the 4 streams did not all start"
            replicas = wait_for(lambda: len(found := ray_server.replica_processes()) == 2 and found, timeout=30)
            assert replicas, f"expected 2 replica processes: {ray_server.replica_processes()}"
            replicas[0].kill()  # kill -9
            at_kill = [content_events(e) for e in live]
            ended = wait_for(lambda: [i for i, f in enumerate(streams) if f.done()], timeout=60)
            time.sleep(2.0)  # the others keep streaming meanwhile
        finally:
            release.set()
        results = [f.result() for f in streams]
    assert ended, "no stream ended after the kill"
    failed = [events for _, events, status in results if any("error" in e for e in events)]
    survived = [(i, events) for i, (_, events, status) in enumerate(results) if not any("error" in e for e in events)]
    assert all(status == 200 for _, _, status in results)
    assert failed and survived, "the kill should end the dead replica's streams and only those"
    for events in failed:
        assert events[-1] == {"done": True}
        error = [e for e in events if "error" in e][0]["error"]
        assert error["code"] == "engine_error"
    for i, events in survived:
        assert content_events(events) > at_kill[i]  # still streaming after the kill

    def recovered():
        try:
            return ask(url, [{"role": "user", "content": "Say yes."}], max_tokens=4)["choices"][0]["finish_reason"]
        except AssertionError:
            return None

    assert wait_for(recovered, timeout=90, every=1.0)
    # Serve replaces the dead replica: two replica processes again, and both answer
    assert wait_for(lambda: len(ray_server.replica_processes()) == 2, timeout=90, every=1.0)
    for _ in range(4):
        ask(url, [{"role": "user", "content": "Say yes."}], max_tokens=4)


def test_sigterm_drains_then_leaves_no_process(ray_server):
    procs = ray_server.processes()
    assert any("raylet" in p.name() for p in procs) and any("gcs_server" in p.name() for p in procs)
    live: list[dict] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(stream, ray_server.url, [{"role": "user", "content": "Tell a story."}],
                                max_tokens=100, ignore_eos=True, events=live)
        assert wait_for(lambda: live, timeout=60, every=0.05)  # the first token is out
        assert ray_server.stop(timeout=90) == 0
        text, events, status = in_flight.result()
    # the request in flight finished before the server went down
    assert status == 200 and events[-1] == {"done": True}
    assert [c["finish_reason"] for e in events for c in e.get("choices", []) if c["finish_reason"]] == ["length"]
    deadline = time.monotonic() + 30
    alive = []
    while time.monotonic() < deadline:
        alive = []
        for pid in ray_server.descendants:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {p.name()}")
            except psutil.NoSuchProcess:
                pass
        if not alive:
            break
        time.sleep(0.5)
    assert not alive, f"left behind: {alive}"
