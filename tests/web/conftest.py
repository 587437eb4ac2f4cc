"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, and page servers.

`make test` installs the browser with scripts/ensure-chromium.sh; without it these tests skip.
Nothing is downloaded: Selenium is pointed at the system chromedriver and browser.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from llmserve.chat_model import AsyncChatModel
from llmserve.server.app import create_app
from llmserve.settings import Settings
from tests.conftest import ThreadServer, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1280,860", "--lang=en-US",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: tests that drive the chat page in headless Chromium")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/web/" in item.nodeid:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """One headless Chromium for the session, with a fresh profile directory."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("chromium and chromium-driver are not installed (run scripts/ensure-chromium.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="llmserve-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser):
    """The session browser, reset to a blank page and desktop size after the test."""
    yield browser
    browser.set_window_size(1280, 860)
    browser.get("about:blank")
    browser.get_log("browser")  # drop this test's console messages


@contextmanager
def page_server(*models: AsyncChatModel, settings: Settings | None = None) -> Iterator[ThreadServer]:
    """A real socket server (uvicorn in a thread) over ``models``; the engines stay reachable."""
    with ThreadServer(create_app(settings or Settings(), models=list(models)), free_port()) as server:
        yield server


def running(server: ThreadServer, model: str = "fake-model") -> int:
    """The engine's running count, as any client can see it on /health."""
    return httpx.get(server.url + "/health").json()["models"][model]["running"]


def wait_for(condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:  # the page re-rendered that element: look again
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
