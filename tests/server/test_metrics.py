"""/metrics over the fake engine: the values move as requests run, are rejected and are cancelled."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmserve.server.app import create_app
from llmserve.server.metrics import rate_limited
from llmserve.settings import Settings
from tests.conftest import ThreadServer, app_client, fake_model, free_port

CHAT = "/v1/chat/completions"


def body(**kw):
    return {"model": "fake-model", "messages": [{"role": "user", "content": "hello there"}], "temperature": 0, **kw}


def scrape(client) -> dict[tuple[str, frozenset], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    labels.setdefault("model_name", "fake-model")
    return samples.get(("llmserve:" + name, frozenset(labels.items())), 0.0)


def post_in_thread(client, json) -> threading.Thread:
    t = threading.Thread(target=lambda: client.post(CHAT, json=json))
    t.start()
    return t


def wait_for(client, predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = scrape(client)
        if predicate(samples):
            return samples
        time.sleep(0.02)
    raise AssertionError(f"metrics never matched; last: { {k[0]: v for k, v in samples.items() if 'bucket' not in k[0]} }")


def test_metrics_exist_at_zero_before_any_request(client):
    samples = scrape(client)
    for name in ("num_requests_running", "num_requests_waiting", "prompt_tokens_total", "generation_tokens_total",
                 "rate_limited_total", "time_to_first_token_seconds_count", "inter_token_latency_seconds_count",
                 "e2e_request_latency_seconds_count", "request_queue_time_seconds_count"):
        assert ("llmserve:" + name, frozenset({("model_name", "fake-model")})) in samples, name
        assert value(samples, name) == 0


def test_completed_requests_move_counters_and_histograms(client):
    usage = client.post(CHAT, json=body()).json()["usage"]
    client.post(CHAT, json=body(stream=True))
    client.post(CHAT, json=body(max_tokens=1))
    s = scrape(client)
    assert value(s, "request_success_total", finished_reason="stop") == 2
    assert value(s, "request_success_total", finished_reason="length") == 1
    assert value(s, "prompt_tokens_total") == 3 * usage["prompt_tokens"]
    assert value(s, "generation_tokens_total") == 2 * usage["completion_tokens"] + 1
    for name in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert value(s, name + "_count") == 3, name
        assert value(s, name + "_sum") >= 0
    # "hello", " there", EOS: two gaps per full answer, none for the one-token answer
    assert value(s, "inter_token_latency_seconds_count") == 4


def test_gauges_follow_running_and_waiting():
    slow = fake_model(reply=" ".join(["word"] * 20), token_delay=0.01, parallel=1)
    with app_client(slow) as client:
        threads = [post_in_thread(client, body()) for _ in range(2)]
        wait_for(client, lambda s: value(s, "num_requests_running") == 1 and value(s, "num_requests_waiting") == 1)
        for t in threads:
            t.join()
        s = scrape(client)
        assert value(s, "num_requests_running") == 0 and value(s, "num_requests_waiting") == 0
        assert value(s, "request_queue_time_seconds_sum") > 0.1  # the second one waited for the first


def test_rejections_by_reason():
    busy = fake_model(reply=" ".join(["word"] * 40), token_delay=0.01, parallel=1, max_queue=0, max_context=64)
    with app_client(busy) as client:
        assert client.post(CHAT, json=body(max_tokens=500)).status_code == 400  # context_length
        assert client.post(CHAT, json=body(temperature=5)).status_code == 400  # invalid
        assert client.post(CHAT, json=body(prediction={"type": "content", "content": "x"})).status_code == 400  # unsupported parameter
        assert client.post(CHAT, json=body(model="nope")).status_code == 404
        t = post_in_thread(client, body())
        wait_for(client, lambda s: value(s, "num_requests_running") == 1)
        assert client.post(CHAT, json=body()).status_code == 503  # queue_full
        t.join()
        s = scrape(client)
    assert value(s, "requests_rejected_total", reason="context_length") == 1
    assert value(s, "requests_rejected_total", reason="unsupported_parameter") == 1
    assert value(s, "requests_rejected_total", reason="queue_full") == 1
    assert value(s, "requests_rejected_total", reason="model_not_found", model_name="") == 1
    # the body failed validation before the model was known
    assert value(s, "requests_rejected_total", reason="invalid", model_name="") == 1
    assert value(s, "request_success_total", finished_reason="stop") == 1


def test_queue_timeout_is_a_rejection():
    busy = fake_model(reply=" ".join(["word"] * 30), token_delay=0.02, parallel=1, queue_timeout=0.05)
    with app_client(busy) as client:
        t = post_in_thread(client, body())
        wait_for(client, lambda s: value(s, "num_requests_running") == 1)
        r = client.post(CHAT, json=body(stream=True))
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_timeout"
        t.join()
        assert value(scrape(client), "requests_rejected_total", reason="queue_timeout") == 1


def test_rate_limited_hook_counts():
    app = create_app(Settings(), models=[fake_model()])
    with app_client(fake_model()) as client:
        rate_limited(client.app.state, "fake-model")
        rate_limited(client.app.state, "fake-model")
        assert value(scrape(client), "rate_limited_total") == 2
    rate_limited(app.state, "fake-model")  # another app's registry is its own


def test_each_app_has_its_own_registry():
    with app_client(fake_model()) as a, app_client(fake_model()) as b:
        a.post(CHAT, json=body())
        assert value(scrape(a), "request_success_total", finished_reason="stop") == 1
        assert value(scrape(b), "request_success_total", finished_reason="stop") == 0


# -- cancellation needs a real socket: the TestClient never disconnects --------------------------------
@pytest.fixture
def slow_server():
    model = fake_model(reply=" ".join(["word"] * 200), token_delay=0.02, parallel=1)
    with ThreadServer(create_app(Settings(), models=[model]), free_port()) as server:
        yield server


def test_cancel_during_decode(slow_server):
    with httpx.Client(base_url=slow_server.url) as c:
        with c.stream("POST", CHAT, json=body(stream=True)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
        s = wait_for(c, lambda s: value(s, "requests_cancelled_total", phase="decode") == 1)
        assert value(s, "num_requests_running") == 0
        assert value(s, "request_success_total", finished_reason="stop") == 0


def test_cancel_in_queue_and_in_prefill(slow_server):
    with httpx.Client(base_url=slow_server.url) as c:
        # the one slot is busy with a long streamed answer: the next request waits in the queue
        with c.stream("POST", CHAT, json=body(stream=True)) as busy:
            assert busy.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                c.post(CHAT, json=body(), timeout=0.3)
            s = wait_for(c, lambda s: value(s, "requests_cancelled_total", phase="queue") == 1)
            assert value(s, "num_requests_waiting") == 0
        wait_for(c, lambda s: value(s, "num_requests_running") == 0)
    slow_first = fake_model(reply="late", token_delay=2.0)
    with ThreadServer(create_app(Settings(), models=[slow_first]), free_port()) as server:
        with httpx.Client(base_url=server.url) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.post(CHAT, json=body(), timeout=0.3)
            wait_for(c, lambda s: value(s, "requests_cancelled_total", phase="prefill") == 1)


# -- several workers: prometheus_client's multiprocess mode --------------------------------------------
def test_multiprocess_mode_aggregates_files(tmp_path):
    script = textwrap.dedent("""
        from llmserve.server.multiproc import prepare
        from llmserve.settings import Settings
        import sys
        settings = Settings(metrics_dir=sys.argv[1])
        prepare(settings)
        from llmserve.server.metrics import multiprocess_mode
        from tests.conftest import app_client, fake_model
        assert multiprocess_mode()
        with app_client(fake_model(), settings=settings) as client:
            client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
            print(client.get("/metrics").text)
    """)
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")  # a previous run's file is removed
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", script, str(metrics_dir)], capture_output=True, text=True,
                         env=env, timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for f in text_string_to_metric_families(out.stdout) for s in f.samples}
    assert value(samples, "request_success_total", finished_reason="stop") == 1
    assert any(p.name.startswith("counter_") for p in metrics_dir.iterdir())
    assert not (metrics_dir / "counter_999999.db").exists()
