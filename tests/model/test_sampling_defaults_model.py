"""The bundled model's sampling defaults (its card's temperature 0.2, top_p 0.9) on the real engine.

Requests that set no sampling parameter get those defaults; at OpenAI's temperature 1 this model
rambles. Each request carries a ``seed`` so the draw is reproducible: the seed picks the draw,
the distribution it is drawn from is still the defaults'.
"""

from __future__ import annotations

from tests.model.test_llamacpp_api import chat, text_of

SEEDS = (1, 2, 3, 4)


def test_models_route_shows_the_bundled_defaults(llama_client):
    card = llama_client.get("/v1/models").json()["data"][0]
    assert card["sampling_defaults"]["temperature"] == 0.2 and card["sampling_defaults"]["top_p"] == 0.9
    assert card["sampling_defaults_source"]["temperature"] == "llmserve"


def test_four_requests_without_sampling_parameters_all_say_paris(llama_client):
    answers = [text_of(chat(llama_client, seed=seed, max_tokens=24)) for seed in SEEDS]
    assert all("Paris" in a for a in answers), answers
    # the defaults are exactly the card's values: the same seeds with them spelled out draw the same
    spelled = [text_of(chat(llama_client, seed=seed, max_tokens=24, temperature=0.2, top_p=0.9)) for seed in SEEDS]
    assert spelled == answers


def test_explicit_values_override_the_defaults(llama_client):
    defaults = [text_of(chat(llama_client, seed=seed, max_tokens=24)) for seed in SEEDS]
    hot = [text_of(chat(llama_client, seed=seed, max_tokens=24, temperature=1.0, top_p=1.0)) for seed in SEEDS]
    assert hot != defaults  # OpenAI's neutral values, asked for explicitly, are what was used
    assert sum("Paris" in a for a in hot) < len(SEEDS)
    greedy = {text_of(chat(llama_client, temperature=0, max_tokens=24)) for _ in range(2)}
    assert greedy == {"The capital of France is Paris."}  # temperature 0 stays greedy over the defaults


def test_completions_route_uses_the_defaults_too(llama_client):
    prompt = "<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n<|im_start|>assistant\n"
    outs = [llama_client.post("/v1/completions", json={"prompt": prompt, "seed": s, "max_tokens": 16}).json()
            for s in SEEDS[:2]]
    assert all("Paris" in o["choices"][0]["text"] for o in outs), outs

