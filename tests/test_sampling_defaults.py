"""Per-model sampling defaults: precedence (request > settings > the model's own > built-ins), every
entry point resolving through them (chat, completions, simple API, both WebSockets, ChatModel),
and /v1/models showing them. Fake engine; the real model's answers are in tests/model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmserve import ChatModel
from llmserve.chat_model import AsyncChatModel
from llmserve.cli import build_parser, load_settings, main
from llmserve.sampling_defaults import BUNDLED, SamplingDefaults, for_model, model_generation_defaults
from llmserve.settings import DefaultSampling, ModelSettings, Settings
from llmserve.types import SamplingParams
from tests.conftest import app_client

gguf = pytest.importorskip("gguf")  # writes the small GGUF files below (requirements/dev.txt)


def write_gguf(path: Path, **metadata) -> Path:
    """A GGUF with just a header: architecture plus ``metadata`` (float values as f32)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in metadata.items():
        if isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, int):
            writer.add_int32(key, value)
        else:
            writer.add_string(key, value)
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


class Recording:
    """A fake-engine model that keeps the SamplingParams of every generation it is asked for."""

    def __init__(self, name: str = "fake-model", **default_sampling):
        settings = ModelSettings(name=name, engine="fake", default_sampling=DefaultSampling(**default_sampling))
        self.model = AsyncChatModel(settings=settings)
        self.seen: list[SamplingParams] = []
        engine = self.model.engine
        generate = engine.generate

        def recording(request):
            self.seen.append(request.sampling)
            return generate(request)

        engine.generate = recording


# -- precedence ---------------------------------------------------------------------------------------
def test_layers_first_wins_and_request_beats_all():
    d = SamplingDefaults.layered(("settings", {"temperature": 0.5}), ("model", {"temperature": 0.7, "top_k": 20}),
                                 ("llmserve", {"temperature": 0.2, "top_p": 0.9}))
    assert d.values["temperature"] == 0.5 and d.sources["temperature"] == "settings"
    assert d.values["top_k"] == 20 and d.sources["top_k"] == "model"
    assert d.values["top_p"] == 0.9 and d.sources["top_p"] == "llmserve"
    assert d.values["min_p"] == 0.0 and d.values["repetition_penalty"] == 1.0  # neutral
    p = d.resolve({"temperature": 0, "top_p": None, "top_k": -1, "stop": "x"})
    assert (p.temperature, p.top_p, p.top_k, p.stop) == (0, 0.9, 0, ("x",))  # explicit 0 stays; None is unset
    assert p.greedy


def test_bundled_model_builtins_are_its_card_recommendation():
    d = for_model(ModelSettings())
    assert {k: d.values[k] for k in BUNDLED} == {"temperature": 0.2, "top_p": 0.9}
    assert d.sources["temperature"] == "llmserve"
    # any other model starts from OpenAI's neutral values
    fake = for_model(ModelSettings(engine="fake"))
    assert fake.values["temperature"] == 1.0 and fake.values["top_p"] == 1.0


def test_gguf_general_sampling_keys(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", **{"general.sampling.temp": 0.6, "general.sampling.top_p": 0.95,
                                              "general.sampling.top_k": 20, "general.sampling.min_p": 0.05,
                                              "general.sampling.penalty_repeat": 1.1, "general.name": "m"})
    own = model_generation_defaults(path)
    assert own == pytest.approx({"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.05,
                                 "repetition_penalty": 1.1})
    d = for_model(ModelSettings(path=str(path), default_sampling=DefaultSampling(temperature=0.3)))
    assert d.values["temperature"] == 0.3 and d.sources["temperature"] == "settings"
    assert d.values["top_k"] == 20 and d.sources["top_k"] == "model"


def test_hf_generation_config(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
         "max_new_tokens": 32768, "bos_token_id": 1}))
    assert model_generation_defaults(tmp_path) == {"temperature": 0.7, "top_p": 0.8, "top_k": 20,
                                                   "repetition_penalty": 1.05}
    d = for_model(ModelSettings(engine="hf", path=str(tmp_path)))
    assert d.sources["temperature"] == "model" and d.values["max_tokens"] is None


def test_unreadable_or_out_of_range_model_defaults_are_left_out(tmp_path):
    (tmp_path / "generation_config.json").write_text('{"temperature": 7.5, "top_p": 0.5}')
    assert model_generation_defaults(tmp_path) == {"top_p": 0.5}
    (tmp_path / "generation_config.json").write_text("not json")
    assert model_generation_defaults(tmp_path) == {}
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x00" * 7)
    assert model_generation_defaults(junk) == {}


# -- configuration ------------------------------------------------------------------------------------
def test_flags_env_and_config_file(tmp_path, monkeypatch):
    args = ["serve", "--default-sampling", "temperature=0.3", "--default-sampling", '{"top_p": 0.5}',
            "--default-sampling", 'stop=["###", "END"]']
    s = load_settings(build_parser().parse_args(args))
    assert s.model_list()[0].default_sampling.given() == {"temperature": 0.3, "top_p": 0.5, "stop": ["###", "END"]}

    monkeypatch.setenv("LLMSERVE_DEFAULT_SAMPLING", '{"top_k": 40, "temperature": 0.9}')
    cfg = tmp_path / "llmserve.yaml"
    cfg.write_text("default_sampling: {min_p: 0.1, temperature: 1.2}\n")
    s = load_settings(build_parser().parse_args(["serve", "--config", str(cfg), "--default-sampling", "temperature=0.1"]))
    # flag > env > file, key by key
    assert s.model_list()[0].default_sampling.given() == {"temperature": 0.1, "top_k": 40, "min_p": 0.1}


def test_worker_processes_rebuild_the_defaults_from_the_environment(monkeypatch):
    """``llmserve serve --workers N`` hands its settings to the workers as LLMSERVE_* variables."""
    s = Settings(default_sampling=DefaultSampling(temperature=0.3, stop=["x"]))
    for key, value in s.to_env().items():
        monkeypatch.setenv(key, value)
    assert Settings().model_list()[0].default_sampling.given() == {"temperature": 0.3, "stop": ["x"]}


def test_models_in_the_config_file_each_have_their_own(tmp_path):
    cfg = tmp_path / "llmserve.yaml"
    cfg.write_text("default_sampling: {temperature: 0.4, top_p: 0.8}\n"
                   "models:\n  - {name: a, engine: fake, default_sampling: {temperature: 0.1}}\n"
                   "  - {name: b, engine: fake}\n")
    a, b = Settings.load(config_file=cfg).model_list()
    assert a.default_sampling.given() == {"temperature": 0.1, "top_p": 0.8}
    assert b.default_sampling.given() == {"temperature": 0.4, "top_p": 0.8}


def test_bad_defaults_are_clear_errors(capsys):
    assert main(["serve", "--default-sampling", "temperature=9"]) == 2
    assert "default_sampling.temperature" in capsys.readouterr().err
    assert main(["serve", "--default-sampling", "tempreature=0.2"]) == 2
    assert "default_sampling.tempreature: unknown setting" in capsys.readouterr().err
    assert main(["serve", "--default-sampling", "temperature"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


# -- every entry point resolves through the model's defaults -------------------------------------------
def test_every_route_applies_the_defaults_and_explicit_values_win():
    rec = Recording(temperature=0.0, top_p=0.5, top_k=7, seed=11)
    msgs = [{"role": "user", "content": "one two"}]
    with app_client(rec.model) as client:
        assert client.post("/v1/chat/completions", json={"messages": msgs}).json()["choices"][0]["message"]["content"] == "one two"
        assert client.post("/v1/completions", json={"prompt": "one two", "max_tokens": 3}).status_code == 200
        assert client.post("/chat", json={"text": "one two"}).json()["result"] == "one two"
        assert client.post("/chat_stream", json={"text": "one two"}).status_code == 200
        with client.websocket_connect("/ws") as ws:
            ws.send_text("one two")
            while ws.receive_json()["type"] == "token":
                pass
        with client.websocket_connect("/v1/chat/ws") as ws:
            ws.send_json({"type": "request", "id": 1, "messages": msgs})
            while ws.receive_json()["type"] != "done":
                pass
        assert len(rec.seen) == 6
        for p in rec.seen:
            assert (p.temperature, p.top_p, p.top_k, p.seed) == (0.0, 0.5, 7, 11)

        rec.seen.clear()
        explicit = {"temperature": 1.3, "top_p": 1.0, "top_k": 0, "seed": 5}
        client.post("/v1/chat/completions", json={"messages": msgs, **explicit})
        client.post("/v1/completions", json={"prompt": "one two", **explicit})
        client.post("/chat", json={"text": "one two", **explicit})
        # an explicit null is "unset", as in OpenAI's API: the default applies
        client.post("/v1/chat/completions", json={"messages": msgs, "temperature": None, "top_k": None})
        assert [(p.temperature, p.top_p, p.top_k, p.seed) for p in rec.seen] == [(1.3, 1.0, 0, 5)] * 3 + [(0.0, 0.5, 7, 11)]


def test_temperature_zero_in_a_request_stays_greedy():
    rec = Recording(temperature=1.5, top_p=0.7)
    with app_client(rec.model) as client:
        for _ in range(3):  # the fake engine echoes when greedy, draws random words otherwise
            r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "alpha beta"}],
                                                          "temperature": 0})
            assert r.json()["choices"][0]["message"]["content"] == "alpha beta"
    assert all(p.greedy and p.top_p == 0.7 for p in rec.seen)


def test_models_route_shows_the_defaults_in_force():
    rec = Recording("tuned", temperature=0.3, stop="###")
    with app_client(rec.model) as client:
        card = client.get("/v1/models").json()["data"][0]
    assert card["sampling_defaults"]["temperature"] == 0.3 and card["sampling_defaults"]["stop"] == ["###"]
    assert card["sampling_defaults"]["top_p"] == 1.0 and card["sampling_defaults"]["max_tokens"] is None
    assert card["sampling_defaults_source"]["temperature"] == "settings"
    assert card["sampling_defaults_source"]["top_p"] == "llmserve"


def test_chat_model_applies_the_defaults():
    with ChatModel(settings=ModelSettings(name="f", engine="fake", default_sampling=DefaultSampling(temperature=0))) as m:
        assert m.sampling_defaults.values["temperature"] == 0
        assert m.chat("one two three").text == "one two three"  # greedy by default: the echo
        assert m.chat("one two three", temperature=1.0, seed=3).text != "one two three"  # explicit wins
