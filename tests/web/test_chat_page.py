"""The chat page in a real browser: streaming, Stop, errors, markdown, against a real socket."""

from __future__ import annotations

import re
import threading

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from llmserve.settings import Settings
from tests.conftest import fake_model
from tests.web.conftest import page_server, running, wait_for

MARKDOWN_REPLY = (
    "Here is a **tiny** Python example with *two* steps:\n\n"
    "1. Define the function\n"
    "2. Call it with `greet('web')`\n\n"
    "```python\n"
    "def greet(name):\n"
    "    return f\"Hello, {name}!\"\n"
    "```\n\n"
    "It prints a greeting; `<b>` tags stay text."
)
LONG_REPLY = " ".join(f"word{i}" for i in range(400))  # 400 tokens at 0.05 s: 20 s unless stopped


def open_page(driver, server) -> None:
    driver.get(server.url + "/")
    wait_for(lambda: driver.execute_script("return document.body.dataset.state") == "idle", what="page ready")


def models_loaded(driver) -> list[str]:
    return [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#model option")]


def send(driver, text: str) -> None:
    box = driver.find_element(By.ID, "prompt")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def state(driver) -> str:
    return driver.execute_script("return document.body.dataset.state")


def last_reply(driver) -> str:
    replies = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .content")
    return replies[-1].text if replies else ""


def prompt_tokens(driver) -> list[int]:
    stats = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats")
    return [int(re.search(r"(\d+) prompt tokens", e.text).group(1)) for e in stats]


def error_shown(driver) -> tuple[str, str] | None:
    """(status, text) of the last error shown under a reply, once there is one."""
    errors = driver.find_elements(By.CSS_SELECTOR, ".msg .error")
    return (errors[-1].get_attribute("data-status"), errors[-1].text) if errors else None


def js_errors(driver) -> list[str]:
    """Console errors other than the failed HTTP responses a test provoked on purpose."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def test_streamed_reply_appears_before_generation_ends(page, artifacts):
    model = fake_model(reply=MARKDOWN_REPLY, token_delay=0.05)
    with page_server(model) as server:
        open_page(page, server)
        wait_for(lambda: models_loaded(page) == ["fake-model"], what="the model list")
        page.find_element(By.ID, "system").send_keys("You are terse.")
        send(page, "Show me a tiny Python example")

        # text is on screen while the engine is still generating
        partial = wait_for(lambda: last_reply(page), what="the first streamed text")
        assert state(page) == "streaming"
        assert running(server) == 1
        assert page.find_element(By.ID, "stop").is_displayed()
        assert not page.find_element(By.ID, "send").is_displayed()

        wait_for(lambda: state(page) == "idle", timeout=20, what="the end of the reply")
        assert running(server) == 0
        final = last_reply(page)
        assert len(final) > len(partial) and final.startswith(partial.split()[0])

        content = page.find_elements(By.CSS_SELECTOR, ".msg.assistant .content")[-1]
        assert content.find_element(By.CSS_SELECTOR, "strong").text == "tiny"
        assert content.find_element(By.CSS_SELECTOR, "em").text == "two"
        assert [li.text for li in content.find_elements(By.CSS_SELECTOR, "ol > li")] == [
            "Define the function", "Call it with greet('web')"]
        code = content.find_element(By.CSS_SELECTOR, "pre code.language-python")
        assert code.text == 'def greet(name):\n    return f"Hello, {name}!"'
        assert "`<b>` tags" not in final and "<b> tags stay text" in final  # escaped, not markup
        assert not content.find_elements(By.CSS_SELECTOR, "b")

        stats = page.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats")[-1].text
        assert "prompt tokens" in stats and "completion tokens" in stats and "tokens/s" in stats
        user = page.find_elements(By.CSS_SELECTOR, ".msg.user .content")[-1].text
        assert user == "Show me a tiny Python example"

        page.save_screenshot(str(artifacts / "web-chat.png"))
        page.set_window_size(420, 860)
        page.save_screenshot(str(artifacts / "web-chat-narrow.png"))
        settings, toggle = page.find_element(By.ID, "settings"), page.find_element(By.ID, "settings-toggle")
        assert not settings.is_displayed() and toggle.is_displayed()  # folded on a phone-sized screen
        toggle.click()
        assert settings.is_displayed() and page.find_element(By.ID, "api-key").is_displayed()
        assert js_errors(page) == []


def test_conversation_keeps_history_and_settings(page):
    """The fake engine echoes the last user turn: each turn gets its own answer, in order."""
    with page_server(fake_model()) as server:
        open_page(page, server)
        wait_for(lambda: models_loaded(page), what="the model list")
        temperature = page.find_element(By.ID, "temperature")
        temperature.clear()
        temperature.send_keys("0")
        send(page, "first question")
        wait_for(lambda: len(page.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats")) == 1, what="reply 1")
        send(page, "second question")
        wait_for(lambda: len(page.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats")) == 2, what="reply 2")
        replies = [e.text for e in page.find_elements(By.CSS_SELECTOR, ".msg.assistant .content")]
        assert replies == ["first question", "second question"]
        first, second = prompt_tokens(page)
        assert second > first + 4  # the second request carried the first exchange

        page.find_element(By.ID, "clear").click()
        assert not page.find_elements(By.CSS_SELECTOR, ".msg") and page.find_element(By.ID, "empty").is_displayed()
        send(page, "third question")
        wait_for(lambda: last_reply(page) == "third question" and state(page) == "idle", what="reply 3")
        assert prompt_tokens(page) == [first]  # a new chat sends no history

        # settings survive a reload (local storage); the conversation starts over
        page.refresh()
        wait_for(lambda: state(page) == "idle", what="reload")
        assert page.find_element(By.ID, "temperature").get_attribute("value") == "0"
        assert not page.find_elements(By.CSS_SELECTOR, ".msg")


def test_stop_cancels_the_generation_on_the_server(page):
    model = fake_model(reply=LONG_REPLY, token_delay=0.05)
    with page_server(model) as server:
        open_page(page, server)
        wait_for(lambda: models_loaded(page), what="the model list")
        send(page, "talk for a long time")
        wait_for(lambda: len(last_reply(page).split()) >= 5, what="a few streamed words")
        assert running(server) == 1

        page.find_element(By.ID, "stop").click()
        wait_for(lambda: running(server) == 0, timeout=5, what="the server to cancel the generation")
        assert model.engine.stats().running == 0
        wait_for(lambda: state(page) == "idle", what="the page to leave streaming")
        shown = last_reply(page)
        assert 5 <= len(shown.split()) < 400
        stats = page.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats")[-1].text
        assert "stopped" in stats
        assert page.find_element(By.ID, "send").is_displayed()
        assert not page.find_element(By.ID, "stop").is_displayed()

        # the server is free again and the page can go on
        model.engine.reply = "done"
        send(page, "and now briefly")
        wait_for(lambda: last_reply(page) == "done" and state(page) == "idle", what="the next reply")
        assert js_errors(page) == []


def test_wrong_api_key_shows_the_servers_401_message(page, artifacts):
    settings = Settings(api_keys=["right-key"])
    with page_server(fake_model(reply="welcome in"), settings=settings) as server:
        open_page(page, server)
        banner = page.find_element(By.ID, "banner")
        wait_for(lambda: banner.is_displayed(), what="the banner")
        assert "Missing API key" in banner.text

        key = page.find_element(By.ID, "api-key")
        key.send_keys("wrong-key", Keys.TAB)  # change event: the model list is fetched again
        wait_for(lambda: "Incorrect API key provided." in banner.text, what="the 401 message")

        send(page, "hello")
        status, text = wait_for(lambda: error_shown(page), what="the error")
        assert status == "401"
        assert "Error 401" in text
        assert "Incorrect API key provided." in text
        assert "Check the API key" in text
        assert page.find_element(By.ID, "prompt").get_attribute("value") == "hello"  # offered again
        page.save_screenshot(str(artifacts / "web-chat-401.png"))

        key.clear()
        key.send_keys("right-key", Keys.TAB)
        wait_for(lambda: models_loaded(page) == ["fake-model"] and not banner.is_displayed(), what="models")
        page.find_element(By.ID, "send").click()
        wait_for(lambda: last_reply(page) == "welcome in" and state(page) == "idle", what="the reply")

        page.refresh()  # the key is kept in local storage
        wait_for(lambda: models_loaded(page) == ["fake-model"], what="models after reload")
        assert page.find_element(By.ID, "api-key").get_attribute("value") == "right-key"


def test_busy_server_shows_503_message_and_advice(page):
    model = fake_model(reply=LONG_REPLY, token_delay=0.05, parallel=1, max_queue=0)
    with page_server(model) as server:
        open_page(page, server)
        wait_for(lambda: models_loaded(page), what="the model list")
        hog_started, release = threading.Event(), threading.Event()

        def hog() -> None:  # holds the only slot; the page's request finds the queue full
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stream": True}
            with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
                assert r.status_code == 200
                hog_started.set()
                release.wait(30)

        thread = threading.Thread(target=hog)
        thread.start()
        try:
            assert hog_started.wait(10)
            send(page, "hello")
            error = wait_for(lambda: page.find_elements(By.CSS_SELECTOR, ".msg .error"), what="the error")[-1]
            assert error.get_attribute("data-status") == "503"
            assert "the request queue is full" in error.text
            assert "busy" in error.text and "1 s" in error.text  # from Retry-After
        finally:
            release.set()
            thread.join(10)


def test_rate_limited_shows_429_message(page):
    settings = Settings(rate_limit_rpm=1)  # one request a minute per client address
    with page_server(fake_model(reply="only once"), settings=settings) as server:
        open_page(page, server)
        wait_for(lambda: models_loaded(page), what="the model list")
        send(page, "first")
        wait_for(lambda: last_reply(page) == "only once" and state(page) == "idle", what="the first reply")
        send(page, "second")

        status, text = wait_for(lambda: error_shown(page), what="the 429 error")
        assert status == "429"
        assert "Error 429" in text
        assert "limit" in text.lower()


def test_failure_mid_stream_keeps_the_text_and_shows_the_error(page, artifacts):
    model = fake_model(reply="one two three four five six", token_delay=0.02, fail_after=3)
    with page_server(model) as server:
        open_page(page, server)
        wait_for(lambda: models_loaded(page), what="the model list")
        send(page, "hello")
        error = wait_for(lambda: page.find_elements(By.CSS_SELECTOR, ".msg.assistant .error"), what="the error")[-1]
        assert "Generation failed" in error.text and "injected failure" in error.text
        assert last_reply(page) == "one two three"
        assert state(page) == "idle"
        assert running(server) == 0
        page.save_screenshot(str(artifacts / "web-chat-error.png"))


def test_markdown_renderer_escapes_html(page):
    with page_server(fake_model()) as server:
        open_page(page, server)
        render = lambda text: page.execute_script("return window.llmMarkdown.render(arguments[0])", text)  # noqa: E731
        hostile = (
            '<img src=x onerror="window.pwned=1"> <script>window.pwned=1</script>\n\n'
            "[click](javascript:window.pwned=1) [ok](https://example.org/?a=1&b=\"2\")\n\n"
            "```html\n<iframe src=\"x\"></iframe>\n```\n\n"
            "`<svg onload=alert(1)>` **<u>bold</u>**"
        )
        html = render(hostile)
        page.execute_script(
            "const d = document.createElement('div'); d.id = 'probe'; d.innerHTML = arguments[0];"
            "document.body.append(d);", html)
        tags = set(page.execute_script(
            "return [...document.querySelectorAll('#probe *')].map(e => e.tagName.toLowerCase())"))
        assert tags <= {"p", "a", "div", "span", "button", "pre", "code", "strong", "em", "br"}
        assert page.execute_script("return window.pwned") is None
        hrefs = page.execute_script("return [...document.querySelectorAll('#probe a')].map(a => a.href)")
        assert hrefs == ["https://example.org/?a=1&b=%222%22"]
        assert "&lt;iframe" in html and "&lt;svg onload" in html

        assert render("- a\n- b\n  - c\n\n1. x\n2. y") == (
            "<ul><li>a</li><li>b<ul><li>c</li></ul></li></ul><ol><li>x</li><li>y</li></ol>")
        assert render("one\ntwo\n\nthree") == "<p>one<br>two</p><p>three</p>"
        assert render("2 * 3 * 4 and snake_case_name") == "<p>2 * 3 * 4 and snake_case_name</p>"
        assert render("*a* _b_ ~~c~~") == "<p><em>a</em> <em>b</em> <del>c</del></p>"
        # a fence still open mid-stream already renders as code
        assert "<pre><code class=\"language-py\">x = 1</code></pre>" in render("```py\nx = 1")


@pytest.mark.model
def test_real_model_reply_in_the_page(page, llama_server):
    page.get(llama_server.url + "/")
    wait_for(lambda: models_loaded(page) == ["smollm2"], timeout=30, what="the model list")
    tokens = page.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("24")
    temperature = page.find_element(By.ID, "temperature")
    temperature.clear()
    temperature.send_keys("0")
    send(page, "Name three colors.")
    wait_for(lambda: page.find_elements(By.CSS_SELECTOR, ".msg.assistant .stats"), timeout=60, what="the reply")
    # greedy: the page shows what the API answers, and the model's markdown list renders as a list
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Name three colors."}],
            "temperature": 0, "max_tokens": 24}
    expected = httpx.post(llama_server.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert expected["choices"][0]["message"]["content"] == "1. Red\n2. Blue\n3. Green"
    items = page.find_elements(By.CSS_SELECTOR, ".msg.assistant .content ol > li")
    assert [li.text for li in items] == ["Red", "Blue", "Green"]
    stats = page.find_element(By.CSS_SELECTOR, ".msg.assistant .stats").text
    assert "completion tokens" in stats and "tokens/s" in stats
    assert js_errors(page) == []


def test_the_page_starts_from_the_model_sampling_defaults(page):
    """An empty temperature field sends none: the model's defaults apply, and the page shows them."""
    from selenium.webdriver.support.ui import Select

    from llmserve.chat_model import AsyncChatModel
    from llmserve.settings import DefaultSampling, ModelSettings

    warm = AsyncChatModel(settings=ModelSettings(name="warm", engine="fake",
                                                 default_sampling=DefaultSampling(temperature=0.3, top_p=0.8)))
    greedy = AsyncChatModel(settings=ModelSettings(name="greedy", engine="fake",
                                                   default_sampling=DefaultSampling(temperature=0)))
    seen = []
    generate = greedy.engine.generate
    greedy.engine.generate = lambda request: (seen.append(request.sampling), generate(request))[1]
    with page_server(warm, greedy) as server:
        open_page(page, server)
        page.execute_script("localStorage.clear()")  # no temperature kept from another test
        page.refresh()
        wait_for(lambda: models_loaded(page) == ["warm", "greedy"], what="the model list")
        temperature = page.find_element(By.ID, "temperature")
        assert temperature.get_attribute("value") == ""
        wait_for(lambda: temperature.get_attribute("placeholder") == "0.3", what="the default as placeholder")
        assert "temperature 0.3, top_p 0.8" in page.find_element(By.ID, "sampling-defaults").text
        Select(page.find_element(By.ID, "model")).select_by_value("greedy")
        wait_for(lambda: temperature.get_attribute("placeholder") == "0", what="the other model's default")
        send(page, "alpha beta")
        wait_for(lambda: last_reply(page) == "alpha beta" and state(page) == "idle", what="the greedy echo")
        assert seen[-1].temperature == 0
        temperature.send_keys("1.2")
        send(page, "gamma delta")
        wait_for(lambda: len(seen) == 2 and state(page) == "idle", what="the second reply")
        assert seen[-1].temperature == 1.2  # a value typed in the field is sent and wins
        assert js_errors(page) == []
