"""A live `llmserve serve` subprocess driven by the official openai SDK, unchanged."""

from __future__ import annotations

import openai
import pytest

FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def sdk(live_server):
    return openai.OpenAI(base_url=live_server + "/v1", api_key="unused")


def test_models_list(sdk):
    models = sdk.models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1"]


def test_chat_completion(sdk):
    out = sdk.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=FRANCE, temperature=0)
    assert out.object == "chat.completion"
    assert "Paris" in out.choices[0].message.content
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens == 42 and out.usage.completion_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_chat_completion_length(sdk):
    out = sdk.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=FRANCE, max_tokens=2)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 2


def test_streaming(sdk):
    stream = sdk.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", messages=FRANCE, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 3
    assert chunks[-1].usage.completion_tokens > 0


def test_chat_logprobs(sdk):
    out = sdk.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=FRANCE, temperature=0,
                                      max_tokens=4, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert "".join(t.token for t in content) == out.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token and t.logprob <= 0
        assert bytes(t.bytes).decode() == t.token
    stream = sdk.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=FRANCE, temperature=0,
                                         max_tokens=4, logprobs=True, top_logprobs=3, stream=True)
    streamed = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]


def test_n_choices(sdk):
    kw = {"model": "SmolLM2-135M-Instruct.Q4_1", "messages": FRANCE, "temperature": 1.0, "seed": 9, "max_tokens": 5}
    out = sdk.chat.completions.create(n=3, **kw)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert out.usage.prompt_tokens == 42 and out.usage.completion_tokens == sum(
        sdk.chat.completions.create(**{**kw, "seed": 9 + i}).usage.completion_tokens for i in range(3))
    stream = sdk.chat.completions.create(n=2, stream=True, **kw)
    texts = ["", ""]
    for c in stream:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in out.choices[:2]]


async def test_async_client(live_server):
    client = openai.AsyncOpenAI(base_url=live_server + "/v1", api_key="unused")
    out = await client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=FRANCE, temperature=0)
    assert "Paris" in out.choices[0].message.content
    stream = await client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", messages=FRANCE, temperature=0, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert "Paris" in text
    await client.close()


def test_errors_surface_as_sdk_exceptions(sdk):
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nope", messages=FRANCE)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=FRANCE, n=100)  # > slots
    assert info.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1",
                                    messages=[{"role": "user", "content": "word " * 9000}])
    assert info.value.body["code"] == "context_length_exceeded"
