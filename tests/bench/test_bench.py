"""``llmserve bench`` against a fake-engine server on a real socket, with tiny numbers."""

from __future__ import annotations

import json

import pytest

from llmserve.bench.runner import Target, parse_target, percentile
from llmserve.cli import main
from llmserve.server.app import create_app
from llmserve.settings import Settings
from tests.conftest import ThreadServer, fake_model, free_port

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server():
    model = fake_model(reply=" ".join(["word"] * 20), token_delay=0.002, parallel=4)
    with ThreadServer(create_app(Settings(), models=[model]), free_port()) as s:
        yield s


def test_parse_target_and_percentile():
    assert parse_target("ours=http://127.0.0.1:8000") == Target("ours", "http://127.0.0.1:8000")
    assert parse_target("http://127.0.0.1:8000/") == Target("127.0.0.1:8000", "http://127.0.0.1:8000/")
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)


def test_bench_json_two_servers_and_plot(server, tmp_path, capsys):
    png = tmp_path / "bench.png"
    rc = main(["bench", "--url", f"ours={server.url}", "--url", f"again={server.url}/v1", "--concurrency", "1,2",
               "--requests", "3", "--max-tokens", "4", "--json", "--plot", str(png)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rows = json.loads(captured.out)
    assert [(r["label"], r["concurrency"]) for r in rows] == [("ours", 1), ("ours", 2), ("again", 1), ("again", 2)]
    for r in rows:
        assert r["model"] == "fake-model"
        assert r["requests"] == 3 and r["errors"] == 0
        assert r["output_tokens"] == 3 * 4  # max_tokens reached each time, counted from usage
        assert r["output_tok_s"] > 0 and r["requests_per_s"] > 0
        assert 0 < r["ttft_p50_ms"] <= r["ttft_p99_ms"]
        assert r["itl_p50_ms"] > 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "ours c=2" in captured.err  # the progress bar, on stderr


def test_bench_table(server, capsys):
    rc = main(["bench", "--url", server.url, "--concurrency", "2", "--requests", "2", "--max-tokens", "2",
               "--no-progress", "--warmup", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "output tok/s" in out and "TTFT p50" in out
    assert "127.0.0.1" in out


def test_bench_counts_errors():
    with ThreadServer(create_app(Settings(api_keys=["secret"]), models=[fake_model()]), free_port()) as s:
        rc = main(["bench", "--url", s.url, "--model", "fake-model", "--concurrency", "1", "--requests", "2",
                   "--warmup", "0", "--json", "--no-progress"])
        assert rc == 1  # every request failed
        rc = main(["bench", "--url", s.url, "--api-key", "secret", "--concurrency", "1", "--requests", "1",
                   "--max-tokens", "2", "--warmup", "0", "--json", "--no-progress"])
        assert rc == 0


def test_bench_errors_reported(capsys):
    with ThreadServer(create_app(Settings(api_keys=["secret"]), models=[fake_model()]), free_port()) as s:
        main(["bench", "--url", s.url, "--model", "fake-model", "--concurrency", "1", "--requests", "2",
              "--warmup", "0", "--json", "--no-progress"])
    (row,) = json.loads(capsys.readouterr().out)
    assert row["errors"] == 2 and "HTTP 401" in row["error_samples"][0]


def test_bench_server_down(capsys):
    rc = main(["bench", "--url", f"http://127.0.0.1:{free_port()}", "--concurrency", "1", "--no-progress"])
    assert rc == 1
    assert "llmserve bench:" in capsys.readouterr().err
