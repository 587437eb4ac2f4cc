"""The key store (hashed keys in SQLite), ``llmserve keys``, and keys on a running app."""

from __future__ import annotations

import sqlite3

import pytest

from llmserve.cli import main
from llmserve.server.keystore import KeyStore, hash_key
from llmserve.settings import Settings
from tests.conftest import app_client, fake_model
from tests.server.test_chat_api import assert_error


def test_keys_are_stored_hashed_never_in_clear(tmp_path):
    db = tmp_path / "keys.db"
    record, key = KeyStore(db).create("alice", rpm=5)
    assert key.startswith("sk-llms-") and len(key) > 40
    assert key not in db.read_bytes().decode("latin-1")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key_hash, key_hint FROM api_keys").fetchall()
    assert rows == [(hash_key(key), key[:12] + "...")]
    found = KeyStore(db).lookup(key)
    assert found is not None and found.id == record.id and found.name == "alice" and found.rpm == 5
    assert KeyStore(db).lookup(key + "x") is None


def test_revoke_by_id_or_name(tmp_path):
    store = KeyStore(tmp_path / "k.db")
    a, key_a = store.create("a")
    _, key_b1 = store.create("b")
    _, key_b2 = store.create("b")
    assert [r.id for r in store.revoke(a.id)] == [a.id]
    assert len(store.revoke("b")) == 2
    assert store.revoke("b") == []
    assert all(store.lookup(k) is None for k in (key_a, key_b1, key_b2))
    assert store.list() == [] and len(store.list(include_revoked=True)) == 3


def test_cli_keys_create_list_revoke(tmp_path, capsys):
    db = str(tmp_path / "keys.db")
    assert main(["keys", "create", "--name", "ci-bot", "--rpm", "30", "--tpm", "0", "--key-db", db]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("sk-llms-")
    assert main(["keys", "list", "--key-db", db]) == 0
    listing = capsys.readouterr().out
    assert "ci-bot" in listing and "30" in listing and "unlimited" in listing and "active" in listing
    assert key not in listing
    assert main(["keys", "revoke", "ci-bot", "--key-db", db]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", "ci-bot", "--key-db", db]) == 1
    assert main(["keys", "list", "--all", "--json", "--key-db", db]) == 0
    assert '"revoked_at": null' not in capsys.readouterr().out


def test_cli_keys_needs_a_key_db(capsys, monkeypatch):
    monkeypatch.delenv("LLMSERVE_KEY_DB", raising=False)
    assert main(["keys", "list"]) == 2
    assert "--key-db" in capsys.readouterr().err


def test_app_accepts_store_keys_and_sees_revocation_at_once(tmp_path):
    db = tmp_path / "keys.db"
    store = KeyStore(db)
    record, key = store.create("alice")
    with app_client(fake_model(), settings=Settings(key_db=str(db), api_keys=["cli-key"])) as client:
        assert_error(client.post("/chat", json={"text": "x"}), 401, code="invalid_api_key")
        assert client.post("/chat", json={"text": "x"}, headers={"authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/v1/models", headers={"x-api-key": "cli-key"}).status_code == 200
        store.revoke(record.id)  # e.g. `llmserve keys revoke` while the server runs
        assert_error(client.post("/chat", json={"text": "x"}, headers={"authorization": f"Bearer {key}"}), 401)
        assert client.get("/health").status_code == 200


def test_key_db_set_but_empty_requires_a_key(tmp_path):
    with app_client(fake_model(), settings=Settings(key_db=str(tmp_path / "empty.db"))) as client:
        assert_error(client.get("/v1/models"), 401)


@pytest.mark.parametrize("argv", [
    ["--rate-limit-rpm", "10"],
    ["--rate-limit-tpm", "1000"],
])
def test_several_workers_with_limits_need_redis(argv, capsys):
    assert main(["serve", "--engine", "fake", "--workers", "2", *argv]) == 2
    err = capsys.readouterr().err
    assert "--redis-url" in err and "--workers 2" in err


def test_several_workers_with_key_store_limits_need_redis(tmp_path, capsys):
    db = str(tmp_path / "keys.db")
    KeyStore(db).create("limited", rpm=3)
    assert main(["serve", "--engine", "fake", "--workers", "2", "--key-db", db]) == 2
    assert "--redis-url" in capsys.readouterr().err
