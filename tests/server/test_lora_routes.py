"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter over fake engines: admin keys only,
OpenAI-shaped errors for everything else, each status documented in /openapi.json. (Loading a
real adapter: tests/lora/test_lora_llamacpp.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmserve.server.app import create_app
from llmserve.server.keystore import KeyStore
from llmserve.settings import Settings
from tests.conftest import app_client, fake_model

LOAD, UNLOAD = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"


@pytest.fixture
def keys(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    _, user = store.create("user")
    _, admin = store.create("ops", admin=True)
    return Settings(key_db=str(tmp_path / "keys.db")), {"Authorization": f"Bearer {user}"}, {"Authorization": f"Bearer {admin}"}


def documented(path: str, status: int) -> bool:
    doc = create_app(Settings(engine="fake")).openapi()
    return str(status) in doc["paths"][path]["post"]["responses"]


def check(r, status: int, path: str, param: str | None = ...) -> None:
    assert r.status_code == status, r.text
    assert documented(path, status)
    if status >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        if param is not ...:
            assert r.json()["error"]["param"] == param


def test_without_a_key_store_nobody_is_admin():
    with app_client(fake_model()) as client:
        r = client.post(LOAD, json={"lora_name": "a", "lora_path": "/x"})
        check(r, 403, LOAD)
        assert "llmserve keys create --admin" in r.json()["error"]["message"]


def test_admin_key_needed(keys):
    settings, user, admin = keys
    with app_client(fake_model(), settings=settings) as client:
        check(client.post(LOAD, json={"lora_name": "a", "lora_path": "/x"}), 401, LOAD)
        check(client.post(LOAD, json={"lora_name": "a", "lora_path": "/x"}, headers=user), 403, LOAD)
        check(client.post(UNLOAD, json={"lora_name": "a"}, headers=user), 403, UNLOAD)
        # an admin gets past auth: the fake engine cannot apply adapters, a 400 naming lora_path
        check(client.post(LOAD, json={"lora_name": "a", "lora_path": "/x"}, headers=admin), 400, LOAD, "lora_path")


def test_bad_requests(keys):
    settings, _, admin = keys
    with app_client(fake_model(), settings=settings) as client:
        check(client.post(LOAD, json={"lora_name": "a"}, headers=admin), 400, LOAD)
        check(client.post(LOAD, json={"lora_name": "fake-model", "lora_path": "/x"}, headers=admin), 400, LOAD, "lora_name")
        check(client.post(LOAD, json={"lora_name": "a", "lora_path": "/x", "base_model_name": "nope"}, headers=admin),
              404, LOAD, "base_model_name")
        check(client.post(UNLOAD, json={"lora_name": "fake-model"}, headers=admin), 404, UNLOAD, "lora_name")
        check(client.post(UNLOAD, json={"lora_name": "a", "extra": 1}, headers=admin), 400, UNLOAD)


def test_while_the_base_loads(keys):
    settings, _, admin = keys
    with app_client(fake_model(load_delay=2.0), settings=settings, wait=False) as client:
        check(client.post(LOAD, json={"lora_name": "a", "lora_path": "/x"}, headers=admin), 503, LOAD)


def test_lora_flags_and_config_file(tmp_path):
    from llmserve.cli import build_parser, load_settings
    from llmserve.lora import AdapterSpec

    args = build_parser().parse_args(["serve", "--lora", "a=/x/a", "--lora", "b=/x/b:0.5"])
    specs = load_settings(args).model_list()[0].adapters()
    assert specs == [AdapterSpec("a", Path("/x/a")), AdapterSpec("b", Path("/x/b"), 0.5)]
    config = tmp_path / "c.yaml"
    config.write_text("models:\n  - name: one\n    lora: [sql=/x/sql]\n  - name: two\n")
    models = Settings.load({}, config).model_list()
    assert [a.name for a in models[0].adapters()] == ["sql"] and models[1].adapters() == []
    with pytest.raises(ValueError, match="unique"):
        Settings(served_model_name="m", lora=["m=/x"])
    with pytest.raises(ValueError, match="NAME=PATH"):
        Settings(lora=["nopath"])


def test_adapter_routes_to_its_base_with_parent():
    from llmserve.adapter_model import AdapterModel
    from llmserve.server.registry import ModelRegistry

    base = fake_model("base")
    registry = ModelRegistry([base])
    view = registry.add_adapter(base, "tuned")
    assert isinstance(view, AdapterModel) and view.engine is base.engine and view.parent == "base"
    assert registry.remove_adapter("tuned") is view and "tuned" not in registry.models
