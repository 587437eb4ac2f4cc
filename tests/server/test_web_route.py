"""The chat page's route: served from the package, self-contained, switchable off."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from llmserve.settings import Settings
from tests.conftest import app_client, fake_model


def test_page_served_at_root(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<title>llmserve chat</title>" in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name, media_type", [
    ("chat.js", "text/javascript"), ("markdown.js", "text/javascript"),
    ("chat.css", "text/css"), ("favicon.svg", "image/svg+xml"),
])
def test_static_assets(client, name, media_type):
    r = client.get(f"/static/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(media_type)
    assert r.content == resources.files("llmserve.server").joinpath("static", name).read_bytes()


@pytest.mark.parametrize("name", ["missing.js", "..%2Fapp.py", "%2E%2E%2Fapp.py", "index.py", ".hidden.js"])
def test_unknown_static_is_404_openai_shaped(client, name):
    r = client.get(f"/static/{name}")
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_page_needs_no_key_but_the_api_does():
    with app_client(fake_model(), settings=Settings(api_keys=["k1"])) as c:
        assert c.get("/").status_code == 200
        assert c.get("/static/chat.js").status_code == 200
        assert c.get("/v1/models").status_code == 401


def test_disabled_web_ui_is_404():
    with app_client(fake_model(), settings=Settings(web_ui=False)) as c:
        assert c.get("/").status_code == 404
        assert c.get("/static/chat.js").status_code == 404
        assert c.get("/v1/models").status_code == 200


def test_web_ui_flag_from_cli_and_env(monkeypatch):
    from llmserve.cli import build_parser, load_settings

    assert load_settings(build_parser().parse_args(["serve", "--web-ui", "false"])).web_ui is False
    monkeypatch.setenv("LLMSERVE_WEB_UI", "0")
    assert load_settings(build_parser().parse_args(["serve"])).web_ui is False


def test_page_loads_nothing_from_elsewhere():
    """No CDN: every URL in the shipped files is a local path."""
    static = resources.files("llmserve.server").joinpath("static")
    for entry in static.iterdir():
        text = entry.read_text()
        for url in re.findall(r"""(?:src|href)=["']([^"']+)["']""", text):
            assert url.startswith("/static/") or url.startswith("$"), f"{entry.name} loads {url}"
        assert "//cdn" not in text and "googleapis" not in text
        assert not re.search(r"""fetch\(\s*["']https?:""", text)
