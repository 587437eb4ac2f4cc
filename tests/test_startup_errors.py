"""Clear start-up errors: ``llmserve serve`` / ``llmserve chat`` with a model or engine that cannot
load fail before the server binds, with one line saying what is missing and how to get it, exit
code 2, no traceback. Real subprocesses, as a user runs them."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llmserve.engines import preflight
from llmserve.errors import EngineUnavailable, InvalidModel, ModelNotFound
from llmserve.settings import ModelSettings
from tests.conftest import free_port

gguf = pytest.importorskip("gguf")  # writes the GGUF of an unknown architecture (requirements/dev.txt)
np = pytest.importorskip("numpy")


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory, bundled_path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-models")
    data = bundled_path.read_bytes()
    (d / "truncated.gguf").write_bytes(data[: len(data) // 2])  # the header is fine, tensors are cut
    (d / "header-cut.gguf").write_bytes(data[:4096])
    (d / "notes.gguf").write_text("these are not weights\n" * 50)
    writer = gguf.GGUFWriter(str(d / "unknown-arch.gguf"), "nosucharch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (d / "empty-dir").mkdir()
    hf = d / "hf-unknown"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "nosuchmodel", "architectures": ["NoSuchForCausalLM"]}')
    return {p.name: p for p in d.iterdir()}


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmserve", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)


def assert_one_clear_line(out: subprocess.CompletedProcess, *expected: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("llmserve: ")
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("name,expected", [
    ("truncated.gguf", ("llama.cpp cannot load", "not within the file bounds", "corrupted or incomplete")),
    ("header-cut.gguf", ("corrupt or truncated GGUF file",)),
    ("notes.gguf", ("is not a model", "not a GGUF file")),
    ("unknown-arch.gguf", ("unknown model architecture: 'nosucharch'",)),
    ("empty-dir", ("is not a model", "without config.json")),
    ("hf-unknown", ("Hugging Face model directory", "--engine hf", "requirements/hf.txt")),
])
def test_serve_refuses_what_is_not_a_loadable_model(bad_models, name, expected):
    port = free_port()
    out = run_cli("serve", str(bad_models[name]), "--port", str(port), "--threads", "1")
    assert_one_clear_line(out, str(bad_models[name]), *expected)
    assert "Uvicorn running" not in out.stderr and port_is_free(port)  # it never bound


def test_serve_missing_model_file(tmp_path):
    out = run_cli("serve", str(tmp_path / "nowhere.gguf"), "--port", str(free_port()))
    assert_one_clear_line(out, "model not found", "nowhere.gguf")


@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_engine_from_an_environment_without_vllm():
    port = free_port()
    out = run_cli("serve", "--engine", "vllm", "--port", str(port))
    assert_one_clear_line(out, "vllm engine needs vLLM", "make install-vllm",
                          ".venv-vllm/bin/llmserve serve --engine vllm")
    assert port_is_free(port)
    assert_one_clear_line(run_cli("chat", "--engine", "vllm"), "make install-vllm")


def test_chat_command_fails_the_same_way(bad_models):
    out = run_cli("chat", str(bad_models["unknown-arch.gguf"]), stdin="hello\n")
    assert_one_clear_line(out, "unknown model architecture: 'nosucharch'")
    assert out.stdout == ""


def test_hf_engine_checks_before_loading(bad_models):
    out = run_cli("serve", "--engine", "hf", str(bad_models["hf-unknown"]), "--port", str(free_port()))
    assert_one_clear_line(out, "transformers cannot load", "nosuchmodel")
    with pytest.raises(InvalidModel, match="architecture 'nosucharch', which transformers cannot read"):
        preflight(ModelSettings(engine="hf", path=str(bad_models["unknown-arch.gguf"])))
    preflight(ModelSettings(engine="hf"))  # the bundled GGUF: transformers reads llama GGUFs


def test_preflight_in_process(bad_models, bundled_path):
    preflight(ModelSettings(path=str(bundled_path)))  # the bundled model passes
    preflight(ModelSettings())
    with pytest.raises(InvalidModel):
        preflight(ModelSettings(path=str(bad_models["truncated.gguf"])))
    with pytest.raises(ModelNotFound):
        preflight(ModelSettings(path="/no/such/model.gguf"))
    with pytest.raises(ModelNotFound, match="chat template file not found"):
        preflight(ModelSettings(chat_template="/no/such/template.jinja"))
    if __import__("importlib").util.find_spec("vllm") is None:
        with pytest.raises(EngineUnavailable, match="make install-vllm"):
            preflight(ModelSettings(engine="vllm"))
