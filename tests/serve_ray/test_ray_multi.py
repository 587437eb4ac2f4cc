"""A config file with two models under ``--ray --autoscale 1:2``: one deployment per model."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import THREADS
from tests.serve_ray.conftest import ensure_stopped, start_ray_server

pytestmark = pytest.mark.ray

FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray-multi")
    config = tmp / "models.yaml"
    config.write_text("models:\n" + "".join(
        f"  - {{name: {name}, engine: llamacpp, parallel: 2, threads: {THREADS}, ctx_size: 2048}}\n"
        for name in ("alpha", "beta")))
    server = start_ray_server(tmp, "--config", str(config), "--autoscale", "1:2")
    try:
        yield server
    finally:
        ensure_stopped(server)


def test_each_model_is_its_own_deployment(two_models):
    url = two_models.url
    assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["alpha", "beta"]
    for name in ("alpha", "beta"):
        r = httpx.post(url + "/v1/chat/completions", timeout=180,
                       json={"model": name, "messages": FRANCE, "temperature": 0, "max_tokens": 8})
        assert r.status_code == 200 and r.json()["model"] == name
        assert "Paris" in r.json()["choices"][0]["message"]["content"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "gamma", "messages": FRANCE})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    replicas = [p for p in two_models.replica_processes()]
    names = sorted(re.search(r"model-(\w+)", " ".join(p.cmdline())).group(1) for p in replicas)
    assert names == ["alpha", "beta"]  # autoscaling starts at its minimum: one replica per model
    assert two_models.stop(timeout=90) == 0
