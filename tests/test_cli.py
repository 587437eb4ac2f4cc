"""CLI: flags generated from Settings, precedence flag > env > config file, and the commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmserve.cli import build_parser, load_settings, main
from llmserve.settings import Settings


def settings_for(argv: list[str]) -> Settings:
    return load_settings(build_parser().parse_args(argv))


def test_defaults():
    s = settings_for(["serve"])
    assert (s.host, s.port, s.engine, s.parallel, s.kv_split) == ("127.0.0.1", 8000, "llamacpp", 0, False)
    assert s.model_list()[0].slots() == 8  # engines without their own sizing: 8 slots


def test_a_yes_no_flag_alone_means_yes():
    assert settings_for(["serve", "--kv-split"]).kv_split is True
    assert settings_for(["serve", "--kv-split", "false"]).kv_split is False
    assert settings_for(["serve", "--web-ui", "false"]).web_ui is False


def test_flags_env_and_config_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "llmserve.yaml"
    cfg.write_text("port: 9100\nparallel: 3\nctx_size: 4096\nthreads: 1\n")
    monkeypatch.setenv("LLMSERVE_PARALLEL", "5")
    monkeypatch.setenv("LLMSERVE_THREADS", "2")
    s = settings_for(["serve", "--config", str(cfg), "--threads", "4", "/models/x.gguf"])
    assert s.port == 9100  # config file
    assert s.parallel == 5  # env beats config
    assert s.threads == 4  # flag beats env
    assert s.ctx_size == 4096
    assert s.model == "/models/x.gguf"


def test_toml_config_and_repeatable_api_key(tmp_path):
    cfg = tmp_path / "llmserve.toml"
    cfg.write_text('max_queue = 7\nengine = "fake"\n')
    s = settings_for(["serve", "--config", str(cfg), "--api-key", "a", "--api-key", "b"])
    assert s.max_queue == 7 and s.engine == "fake" and s.api_keys == ["a", "b"]


def test_bad_values_are_clear_errors(tmp_path, capsys):
    assert main(["serve", "--parallel", "-1"]) == 2
    assert "parallel" in capsys.readouterr().err
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    with pytest.raises(SystemExit):
        main(["serve", "--engine", "nope"])


def test_models_lists_bundled_default():
    out = subprocess.run([sys.executable, "-m", "llmserve", "models", "--json"], capture_output=True, text=True, check=True)
    models = json.loads(out.stdout)
    bundled = [m for m in models if m["bundled"]]
    assert bundled and bundled[0]["name"] == "SmolLM2-135M-Instruct.Q4_1" and bundled[0]["format"] == "gguf"


def test_serve_help_documents_env_vars():
    out = subprocess.run([sys.executable, "-m", "llmserve", "serve", "--help"], capture_output=True, text=True, check=True)
    assert "LLMSERVE_CTX_SIZE" in out.stdout and "--threads" in out.stdout and "MODEL_PATH" in out.stdout


def test_chat_command_keeps_the_conversation():
    script = "What is the capital of France? Answer in one word.\nRepeat your last answer.\n/exit\n"
    out = subprocess.run(
        [sys.executable, "-m", "llmserve", "chat", "--temperature", "0", "--max-tokens", "16", "--threads", "1",
         "--parallel", "1", "--ctx-size", "2048"],
        input=script, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    replies = [line for line in out.stdout.split("> ") if line.strip()]
    assert "Paris" in replies[0]
    assert len(replies) >= 2


def test_workers_share_the_cores_by_default(monkeypatch, caplog):
    # --workers 2 on this machine: each worker's engine gets half the cores, not all of them
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert settings_for(["serve", "--workers", "2"]).model_list()[0].resolved_threads() == 2
    assert settings_for(["serve", "--workers", "3"]).model_list()[0].resolved_threads() == 1
    assert settings_for(["serve"]).model_list()[0].resolved_threads() == 4
    # an explicit --threads is kept, and oversubscribing the cores is warned about
    explicit = settings_for(["serve", "--workers", "2", "--threads", "4"])
    assert explicit.model_list()[0].resolved_threads() == 4
    from llmserve.cli import warn_oversubscribed

    with caplog.at_level("WARNING"):
        warn_oversubscribed(explicit)
    assert "8 compute threads on 4 cores" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        warn_oversubscribed(settings_for(["serve", "--workers", "2"]))
    assert "compute threads" not in caplog.text
