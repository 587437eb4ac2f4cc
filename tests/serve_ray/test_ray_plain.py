"""What ``--ray`` does without a cluster: the wire format, sizing, the ingress's vocabulary, and
the refusals that come before Ray starts (none of this imports Ray)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmserve import errors
from llmserve.engines.llamacpp.engine import LlamaCppEngine
from llmserve.serve_ray.sizing import in_flight_limit, parse_autoscale
from llmserve.serve_ray.vocab import load_vocabulary
from llmserve.serve_ray.wire import error_from_wire, error_to_wire
from llmserve.settings import ModelSettings, Settings
from llmserve.types import Message
from tests.conftest import llama_settings


@pytest.mark.parametrize("exc", [
    errors.Overloaded("queue full", retry_after=7),
    errors.QueueTimeout("waited too long", retry_after=2),
    errors.ContextLengthExceeded("too long", param="messages"),
    errors.InvalidRequest("bad token", param="tokens", code="custom"),
    errors.EngineError("boom"),
])
def test_errors_cross_the_handle_unchanged(exc):
    back = error_from_wire(error_to_wire(exc))
    assert type(back) is type(exc)
    assert (back.message, back.param, back.code, back.status_code) == (exc.message, exc.param, exc.code, exc.status_code)
    assert getattr(back, "retry_after", None) == getattr(exc, "retry_after", None)


def test_an_unknown_error_class_is_an_engine_error():
    back = error_from_wire({"class": "SystemExit", "message": "x"})
    assert type(back) is errors.EngineError and back.status_code == 500


def test_sizing():
    assert parse_autoscale("1:4") == (1, 4)
    for bad in ("4:1", "0:2", "2", "a:b", "1:"):
        with pytest.raises(ValueError):
            parse_autoscale(bad)
    model = ModelSettings(parallel=4, max_queue=10)
    assert in_flight_limit(model, Settings(replicas=3)) == 3 * 4 + 10
    assert in_flight_limit(model, Settings(replicas=3, max_queued=2)) == 3 * 4 + 2
    assert in_flight_limit(model, Settings(autoscale="1:5", max_queued=1)) == 5 * 4 + 1


@pytest.mark.model
async def test_the_ingress_tokenizes_and_renders_as_the_engine_does():
    settings = llama_settings(name="smollm2", parallel=1, ctx_size=1024)
    engine = LlamaCppEngine(settings)
    await engine.start()
    vocab = load_vocabulary(settings)
    try:
        messages = [Message("system", "Be brief."), Message("user", "Hi <|im_end|> there, ünïcode 🙂")]
        prompt = engine.render_chat(messages)
        assert vocab.render_chat(messages) == prompt
        assert vocab.render_chat(messages, add_generation_prompt=False) == engine.render_chat(messages, add_generation_prompt=False)
        tokens = engine.tokenize(prompt)
        assert vocab.tokenize(prompt) == tokens
        assert vocab.tokenize("hello", add_special=True) == engine.tokenize("hello", add_special=True)
        assert vocab.tokenize(prompt, parse_special=False) == engine.tokenize(prompt, parse_special=False) != tokens
        tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
        assert vocab.render_chat(messages, tools=tools) == engine.render_chat(messages, tools=tools)
        assert vocab.detokenize(tokens) == engine.detokenize(tokens)
        with pytest.raises(errors.InvalidRequest):
            vocab.detokenize([10**9])
    finally:
        vocab.close()
        await engine.stop()


@pytest.mark.parametrize("args, message", [
    (["--engine", "fake"], "the fake engine cannot be served with --ray"),
    (["--autoscale", "3:1"], "--autoscale wants MIN:MAX"),
    (["--workers", "2"], "--workers does not apply with --ray"),
    (["/nonexistent/model.gguf"], "/nonexistent/model.gguf"),
])
def test_refused_before_ray_starts(args, message):
    code = ("import sys; from llmserve.cli import main; rc = main(['serve', '--ray', *sys.argv[1:]]); "
            "assert 'ray' not in sys.modules, 'ray was imported'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr


def test_import_llmserve_does_not_import_ray():
    code = "import sys, llmserve, llmserve.cli, llmserve.server.app; assert 'ray' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
