"""Files and Batch APIs over the fake engine, through the official openai SDK (its transport is
the app itself): shapes, validation failures, cancel, per-key isolation, limits."""

from __future__ import annotations

import json
import time

import openai
import pytest

from llmserve.server.app import create_app
from llmserve.settings import Settings
from tests.conftest import app_client, fake_model

CHAT = "/v1/chat/completions"


def line(custom_id: str, content: str = "hello there", url: str = CHAT, **body) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                       "body": {"model": "fake-model", "messages": [{"role": "user", "content": content}], **body}})


def jsonl(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def sdk_for(client, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)


def wait_done(sdk: openai.OpenAI, batch_id: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        time.sleep(0.05)
    raise TimeoutError(f"batch {batch_id} still {batch.status}")


def run_batch(sdk, data: bytes, endpoint: str = CHAT):
    source = sdk.files.create(file=("in.jsonl", data), purpose="batch")
    batch = sdk.batches.create(input_file_id=source.id, endpoint=endpoint, completion_window="24h")
    return wait_done(sdk, batch.id)


def results(sdk, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    rows = [json.loads(x) for x in sdk.files.content(file_id).text.splitlines()]
    assert len({r["custom_id"] for r in rows}) == len(rows)
    return {r["custom_id"]: r for r in rows}


@pytest.fixture
def client(tmp_path):
    with app_client(fake_model(), settings=Settings(data_dir=str(tmp_path))) as c:
        yield c


def test_batch_end_to_end(client):
    sdk = sdk_for(client)
    data = jsonl(line("a", "one two", temperature=0), line("b", "three"), line("c", "x", max_tokens=1),
                 line("missing", model="no-such-model"))
    source = sdk.files.create(file=("in.jsonl", data), purpose="batch")
    assert source.status == "processed" and source.bytes == len(data) and source.purpose == "batch"
    assert source.filename == "in.jsonl"
    assert sdk.files.retrieve(source.id).id == source.id
    assert sdk.files.content(source.id).content == data
    batch = sdk.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h",
                               metadata={"job": "nightly"})
    assert batch.object == "batch" and batch.status == "validating" and batch.metadata == {"job": "nightly"}
    assert batch.expires_at == batch.created_at + 24 * 3600
    done = wait_done(sdk, batch.id)
    assert done.status == "completed"
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 3, 1)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = results(sdk, done.output_file_id)
    assert sorted(out) == ["a", "b", "c"]
    a = out["a"]
    assert a["error"] is None and a["id"].startswith("batch_req_")
    assert a["response"]["status_code"] == 200 and a["response"]["request_id"] == a["id"]
    assert a["response"]["body"]["object"] == "chat.completion"
    assert a["response"]["body"]["choices"][0]["message"]["content"] == "one two"
    assert out["c"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    errors = results(sdk, done.error_file_id)
    assert list(errors) == ["missing"]
    assert errors["missing"]["response"]["status_code"] == 404
    assert errors["missing"]["response"]["body"]["error"]["code"] == "model_not_found"


def test_completions_and_embeddings_endpoints(client):
    sdk = sdk_for(client)
    comp = json.dumps({"custom_id": "p", "method": "POST", "url": "/v1/completions",
                       "body": {"model": "fake-model", "prompt": "abc", "max_tokens": 3}})
    done = run_batch(sdk, jsonl(comp), "/v1/completions")
    assert results(sdk, done.output_file_id)["p"]["response"]["body"]["object"] == "text_completion"
    emb = json.dumps({"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
                      "body": {"model": "fake-model", "input": "abc", "encoding_format": "float"}})
    done = run_batch(sdk, jsonl(emb), "/v1/embeddings")
    body = results(sdk, done.output_file_id)["e"]["response"]["body"]
    assert body["object"] == "list" and len(body["data"][0]["embedding"]) == 16


@pytest.mark.parametrize("bad, code, number", [
    ("{not json", "invalid_json_line", 2),
    (json.dumps({"custom_id": "x", "method": "POST", "url": CHAT}), "missing_required_parameter", 2),
    (json.dumps({"custom_id": "x", "method": "GET", "url": CHAT, "body": {}}), "invalid_method", 2),
    (line("x", url="/v1/completions"), "invalid_url", 2),
    (line("a"), "duplicate_custom_id", 2),
    (json.dumps(["a"]), "invalid_request", 2),
    (line("x", stream=True), "invalid_body", 2),
])
def test_invalid_line_fails_the_batch_at_validating(client, bad, code, number):
    sdk = sdk_for(client)
    done = run_batch(sdk, jsonl(line("a"), bad, line("z")))
    assert done.status == "failed" and done.failed_at
    assert done.output_file_id is None and done.in_progress_at is None
    [error] = done.errors.data
    assert error.code == code and error.line == number and f"line {number}" in error.message


def test_empty_and_oversized_inputs(tmp_path):
    settings = Settings(data_dir=str(tmp_path), batch_max_lines=2, batch_max_file_bytes=2000)
    with app_client(fake_model(), settings=settings) as client:
        sdk = sdk_for(client)
        assert run_batch(sdk, b"\n\n").errors.data[0].code == "empty_file"
        assert run_batch(sdk, jsonl(line("a"), line("b"), line("c"))).errors.data[0].code == "too_many_requests"
        with pytest.raises(openai.APIStatusError) as err:
            sdk.files.create(file=("big.jsonl", b"x" * 5000), purpose="batch")
        assert err.value.status_code == 413


def test_create_errors(client):
    sdk = sdk_for(client)
    with pytest.raises(openai.NotFoundError):
        sdk.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    source = sdk.files.create(file=("in.jsonl", jsonl(line("a"))), purpose="batch")
    r = client.post("/v1/batches", json={"input_file_id": source.id, "endpoint": "/v1/responses",
                                         "completion_window": "24h"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "endpoint"
    r = client.post("/v1/batches", json={"input_file_id": source.id, "endpoint": CHAT, "completion_window": "1h"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "completion_window"
    r = client.post("/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "fine-tune"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = client.post("/v1/files", data={"purpose": "batch"})
    assert r.status_code == 400
    for path in ("/v1/batches/batch_nope", "/v1/files/file-nope", "/v1/files/file-nope/content"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_list_pages_and_delete(client):
    sdk = sdk_for(client)
    source = sdk.files.create(file=("in.jsonl", jsonl(line("a"))), purpose="batch")
    ids = [sdk.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h").id for _ in range(3)]
    page = sdk.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    assert [b.id for b in page.get_next_page().data] == ids[:1]
    assert [b.id for b in sdk.batches.list()] == ids[::-1]  # auto-paging
    for batch_id in ids:
        wait_done(sdk, batch_id)
    assert source.id in [f.id for f in sdk.files.list(purpose="batch")]
    assert sdk.files.delete(source.id).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(source.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.delete(source.id)


def test_cancel_stops_new_lines_and_keeps_those_done(tmp_path):
    slow = fake_model(token_delay=0.02, parallel=2)
    with app_client(slow, settings=Settings(data_dir=str(tmp_path))) as client:
        sdk = sdk_for(client)
        data = jsonl(*[line(f"r{i}", "w " * 10) for i in range(40)])
        source = sdk.files.create(file=("in.jsonl", data), purpose="batch")
        batch = sdk.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
        while sdk.batches.retrieve(batch.id).request_counts.completed < 2:
            time.sleep(0.02)
        cancelling = sdk.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        done = wait_done(sdk, batch.id)
        assert done.status == "cancelled" and done.cancelled_at
        finished = done.request_counts.completed
        assert 2 <= finished < 40 and done.request_counts.failed == 0
        assert len(results(sdk, done.output_file_id)) == finished
        assert sdk.batches.cancel(batch.id).status == "cancelled"  # again: unchanged
        completed = run_batch(sdk, jsonl(line("z")))
        with pytest.raises(openai.ConflictError):
            sdk.batches.cancel(completed.id)


def test_expired_batch_keeps_what_is_done_and_reports_the_rest(tmp_path):
    import sqlite3

    slow = fake_model(token_delay=0.02, parallel=2)
    with app_client(slow, settings=Settings(data_dir=str(tmp_path))) as client:
        sdk = sdk_for(client)
        source = sdk.files.create(file=("in.jsonl", jsonl(*[line(f"r{i}", "w " * 10) for i in range(30)])),
                                  purpose="batch")
        batch = sdk.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
        while sdk.batches.retrieve(batch.id).request_counts.completed < 2:
            time.sleep(0.02)
        with sqlite3.connect(tmp_path / "llmserve.db") as db:  # the 24 hours are over
            db.execute("UPDATE batches SET expires_at = 0 WHERE id = ?", (batch.id,))
        done = wait_done(sdk, batch.id)
        assert done.status == "expired" and done.expired_at
        ok, failed = results(sdk, done.output_file_id), results(sdk, done.error_file_id)
        assert len(ok) >= 2 and len(ok) + len(failed) == 30 and not set(ok) & set(failed)
        assert {r["error"]["code"] for r in failed.values()} == {"batch_expired"}


def test_each_key_sees_only_its_own(tmp_path):
    settings = Settings(data_dir=str(tmp_path), api_keys=["key-a", "key-b"])
    with app_client(fake_model(), settings=settings) as client:
        a, b = sdk_for(client, "key-a"), sdk_for(client, "key-b")
        done = run_batch(a, jsonl(line("mine")))
        source_id = done.input_file_id
        for call in (lambda: b.batches.retrieve(done.id), lambda: b.files.retrieve(source_id),
                     lambda: b.files.content(done.output_file_id), lambda: b.batches.cancel(done.id),
                     lambda: b.files.delete(source_id),
                     lambda: b.batches.create(input_file_id=source_id, endpoint=CHAT, completion_window="24h")):
            with pytest.raises(openai.NotFoundError):
                call()
        assert b.batches.list().data == [] and b.files.list().data == []
        assert [x.id for x in a.batches.list()] == [done.id]
        with pytest.raises(openai.AuthenticationError):
            sdk_for(client, "wrong").files.list()


def test_batch_lines_skip_the_live_rate_limit(tmp_path):
    settings = Settings(data_dir=str(tmp_path), rate_limit_rpm=2)
    with app_client(fake_model(), settings=settings) as client:
        done = run_batch(sdk_for(client), jsonl(*[line(f"r{i}") for i in range(5)]))
        assert done.request_counts.completed == 5


def test_metrics_count_lines_and_batches(client):
    sdk = sdk_for(client)
    run_batch(sdk, jsonl(line("a"), line("b", model="nope")))
    text = client.get("/metrics").text
    assert 'llmserve:batches{status="completed"} 1.0' in text
    assert 'llmserve:batch_lines{state="queued"} 0.0' in text


# (method, path) of the Files and Batch routes as /openapi.json names them (tests/server/test_openapi.py)
BATCH_ROUTES = {("POST", "/v1/files"), ("GET", "/v1/files"), ("GET", "/v1/files/{file_id}"),
                ("DELETE", "/v1/files/{file_id}"), ("GET", "/v1/files/{file_id}/content"),
                ("POST", "/v1/batches"), ("GET", "/v1/batches"), ("GET", "/v1/batches/{batch_id}"),
                ("POST", "/v1/batches/{batch_id}/cancel")}


def test_every_status_of_the_routes_is_documented(tmp_path):
    doc = create_app(Settings(engine="fake", data_dir=str(tmp_path))).openapi()
    seen: set[tuple[str, str, int]] = set()
    settings = Settings(data_dir=str(tmp_path), api_keys=["k"], batch_max_file_bytes=1000)
    with app_client(fake_model(), settings=settings) as client:
        key = {"authorization": "Bearer k"}

        def hit(method: str, template: str, path: str, **kw) -> dict:
            r = client.request(method, path, **kw)
            seen.add((method, template, r.status_code))
            return r.json() if r.headers.get("content-type", "").startswith("application/json") else {}

        upload = {"files": {"file": ("in.jsonl", jsonl(line("a")))}, "data": {"purpose": "batch"}}
        file_id = hit("POST", "/v1/files", "/v1/files", headers=key, **upload)["id"]
        hit("POST", "/v1/files", "/v1/files", **upload)  # 401
        hit("POST", "/v1/files", "/v1/files", headers=key, data={"purpose": "batch"})  # 400
        hit("POST", "/v1/files", "/v1/files", headers=key, files={"file": ("x", b"x" * 5000)},
            data={"purpose": "batch"})  # 413
        for method, template in (("GET", "/v1/files/{file_id}"), ("GET", "/v1/files/{file_id}/content")):
            for fid, headers in ((file_id, key), ("file-nope", key), (file_id, {})):
                hit(method, template, template.replace("{file_id}", fid), headers=headers)
        for query, headers in (("", key), ("?limit=0", key), ("", {})):
            hit("GET", "/v1/files", "/v1/files" + query, headers=headers)
            hit("GET", "/v1/batches", "/v1/batches" + query, headers=headers)
        create = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
        batch_id = hit("POST", "/v1/batches", "/v1/batches", headers=key, json=create)["id"]
        hit("POST", "/v1/batches", "/v1/batches", headers=key, json={**create, "input_file_id": "file-nope"})
        hit("POST", "/v1/batches", "/v1/batches", headers=key, json={**create, "completion_window": "1h"})
        hit("POST", "/v1/batches", "/v1/batches", json=create)
        for bid, headers in ((batch_id, key), ("batch_nope", key), (batch_id, {})):
            hit("GET", "/v1/batches/{batch_id}", f"/v1/batches/{bid}", headers=headers)
            hit("POST", "/v1/batches/{batch_id}/cancel", f"/v1/batches/{bid}/cancel", headers=headers)
        sdk = sdk_for(client, "k")
        wait_done(sdk, run_batch(sdk, jsonl(line("b"))).id)
        done = [b for b in sdk.batches.list() if b.status == "completed"][0]
        hit("POST", "/v1/batches/{batch_id}/cancel", f"/v1/batches/{done.id}/cancel", headers=key)  # 409
        for fid, headers in ((file_id, key), (file_id, key), (file_id, {})):  # 200, then 404, 401
            hit("DELETE", "/v1/files/{file_id}", f"/v1/files/{fid}", headers=headers)
    ops = {(m.upper(), p): op for p, v in doc["paths"].items() for m, op in v.items()}
    assert {(m, p) for m, p, _ in seen} == BATCH_ROUTES
    assert {s for _, _, s in seen} == {200, 400, 401, 404, 409, 413}
    for method, path, status in seen:
        assert str(status) in ops[(method, path)]["responses"], (method, path, status)
