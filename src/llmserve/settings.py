"""All configuration. Every field has a description: it is also the CLI's ``--help``.

Precedence, highest first: command-line flags, ``LLMSERVE_*`` environment variables, the
optional YAML/TOML config file (``--config``), the defaults below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

EngineName = Literal["llamacpp", "hf", "vllm", "fake"]
Q41Kernel = Literal["auto", "tiles", "stock"]
Q41_KERNEL_HELP = ("Q4_1 matmul kernel of the llama.cpp engine: auto measures llmserve's tiles against ggml's "
                   "vec_dot per batch size once per CPU, model and thread count (cached) and runs the faster "
                   "one at each size; tiles or stock force one.")

DEFAULT_SAMPLING_HELP = (
    "Sampling defaults for the parameters a request leaves unset, over the model's own (its "
    "generation_config.json or GGUF general.sampling.* keys) and llmserve's built-ins: "
    "--default-sampling temperature=0.2 --default-sampling top_p=0.9 (repeatable, or one JSON "
    "object); config file: default_sampling: {temperature: 0.2}. Keys: temperature, top_p, top_k, "
    "min_p, max_tokens, stop, seed, presence_penalty, frequency_penalty, repetition_penalty."
)


LORA_HELP = ("LoRA adapter served beside its base model under its own name: NAME=PATH[:SCALE], repeatable. "
             "PATH is a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) or, for "
             "llama.cpp, a GGUF LoRA; SCALE multiplies its effect (default 1). Requests pick it with "
             "'model': NAME; an adapter that does not fit the model is refused at start.")


def _check_lora(value: list[str]) -> list[str]:
    from llmserve.lora import parse_spec

    names = [parse_spec(v).name for v in value]  # ValueError: NAME=PATH[:SCALE] expected
    if len(names) != len(set(names)):
        raise ValueError(f"LoRA names must be unique, got {names}")
    return value


class DefaultSampling(BaseModel):
    """Sampling defaults for one model (unset: the next source decides; see sampling_defaults.py)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, description="0 or -1 disables.")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = Field(None)
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("stop takes at most 16 sequences")
        return value

    def given(self) -> dict[str, Any]:
        """The defaults set here (unset ones left out)."""
        return self.model_dump(exclude_none=True)


class ModelSettings(BaseModel):
    """One served model: what the engine needs to load and run it."""

    name: str | None = Field(None, description="Name clients use in 'model' (default: the file or directory name).")
    engine: EngineName = Field("llamacpp", description="Inference engine.")
    path: str | None = Field(None, description="GGUF file or Hugging Face model directory (default: the bundled SmolLM2-135M-Instruct).")
    ctx_size: int = Field(0, ge=0, description="KV-cache size in tokens, shared by all requests: one request may use all of it (prompt + completion) unless --kv-split (0: the model's training context, at most a quarter of memory; other engines: the longest request).")
    parallel: int = Field(0, ge=0, le=256, description="Sequences decoded together (continuous-batching slots); 0: auto (llama.cpp: one per 256 tokens of KV cache, 4 to 64, so 32 for an 8k cache; 8 with --kv-split and on other engines).")
    kv_split: bool = Field(False, description="llama.cpp: split the KV cache evenly into --parallel streams (each request may use ctx-size / parallel tokens), the layout before llama.cpp's unified cache; for comparison.")
    threads: int = Field(0, ge=0, description="CPU threads for inference (0: all cores, divided among --workers).")
    batch_size: int = Field(512, ge=16, description="Most tokens one engine step may process (prefill is chunked to fit).")
    max_queue: int = Field(64, ge=0, description="Requests that may wait for a slot; beyond that the server answers 503.")
    queue_timeout: float | None = Field(None, gt=0, description="Seconds a request may wait for a slot before a 503 queue_timeout (unset: no limit).")
    chat_template: str | None = Field(None, description="Jinja chat template file overriding the model's own.")
    flash_attn: Literal["auto", "on", "off"] = Field("auto", description="llama.cpp flash attention; auto: on with the unified KV cache (it skips other sequences' cells, and a row's attention does not depend on the rest of the batch, so greedy answers do not either), off with --kv-split (there off decodes faster on CPU: 37.7 vs 41.5 ms a step for 8 sequences).")
    q4_1_kernel: Q41Kernel = Field("auto", description=Q41_KERNEL_HELP)
    options: dict[str, Any] = Field(default_factory=dict, description="Engine-specific options (config file only).")
    allow_special_tokens_in_content: bool = Field(False, description="Parse special-token strings written in message content (e.g. '<|im_end|>') as control tokens, as llmserve did before; off: content is text and cannot forge chat turns.")
    watchdog_timeout: float = Field(120.0, gt=0, description="Seconds an engine with work may go without finishing a step; then /health answers 503 and the requests waiting on it fail with 503 engine_stalled.")
    default_sampling: DefaultSampling = Field(default_factory=DefaultSampling, description=DEFAULT_SAMPLING_HELP)
    lora: list[str] = Field(default_factory=list, description=LORA_HELP)

    @field_validator("lora")
    @classmethod
    def _lora_format(cls, value: list[str]) -> list[str]:
        return _check_lora(value)

    def adapters(self) -> list:
        """The ``--lora`` adapters as ``llmserve.lora.AdapterSpec``."""
        from llmserve.lora import parse_spec

        return [parse_spec(v) for v in self.lora]

    def served_name(self) -> str:
        if self.name:
            return self.name
        return Path(self.resolved_path()).name.removesuffix(".gguf") if self.resolved_path() else self.engine

    def resolved_path(self) -> str:
        if self.path:
            return self.path
        if self.engine == "fake":
            return ""
        from llmserve.models import bundled_model_path

        return str(bundled_model_path())

    def resolved_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    def slots(self, auto: int = 8) -> int:
        """``parallel``, or ``auto`` when it is 0 (engines without their own sizing)."""
        return self.parallel or auto


class Settings(BaseSettings):
    """Server settings plus the default model's (flat, so each is a flag and an env var)."""

    model_config = SettingsConfigDict(env_prefix="LLMSERVE_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413.")
    api_keys: list[str] = Field(default_factory=list, description="API keys clients must send as 'Authorization: Bearer KEY' (repeat --api-key; env: JSON list). Empty: no auth.")
    web_ui: bool = Field(True, description="Serve the browser chat page at '/' (it calls the public API, so API keys still apply).")
    # -- API keys, rate limits, worker processes (server/keystore.py, server/ratelimit.py) --------
    key_db: str | None = Field(None, description="SQLite file of hashed API keys managed with 'llmserve keys'; when set, every API route needs a key from it or from --api-key.")
    rate_limit_rpm: int | None = Field(None, ge=1, description="Default requests per minute per API key (per client address without auth); unset: unlimited. Keys may override it.")
    rate_limit_tpm: int | None = Field(None, ge=1, description="Default tokens (prompt + completion) per minute per API key; unset: unlimited. Keys may override it.")
    redis_url: str | None = Field(None, description="Redis URL (redis://host:port/db) for rate-limit counters shared by all workers; unset: in-process counters.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes, each loading its own engine; rate limits across workers need --redis-url.")
    # -- end API keys, rate limits, worker processes ----------------------------------------------
    # -- batch jobs and graceful shutdown (batch/, server/drain.py) --------------------------------
    data_dir: str = Field(default_factory=lambda: str(default_data_dir()), description="Directory for uploaded files and batch jobs (SQLite in WAL mode plus plain files); batches resume from it after a restart.")
    batch_max_file_bytes: int = Field(200 * 1024 * 1024, ge=1, description="Largest file accepted by POST /v1/files (OpenAI's limit: 200 MB).")
    batch_max_lines: int = Field(50_000, ge=1, description="Most requests one batch input file may hold (OpenAI's limit: 50,000).")
    batch_concurrency: int = Field(0, ge=0, description="Batch lines in flight per model (0: the model's --parallel slots, so an idle server keeps every slot busy; live requests still come first).")
    shutdown_timeout: float = Field(30.0, ge=0, description="On SIGTERM: seconds in-flight requests get to finish (/health answers 503 draining meanwhile); then streams end with a server_shutting_down error event. A second signal stops at once.")
    # -- end batch jobs and graceful shutdown ---------------------------------------------------------

    model: str | None = Field(None, description="GGUF file or Hugging Face model directory (default: the bundled SmolLM2-135M-Instruct).")
    served_model_name: str | None = Field(None, description="Name clients use in 'model' (default: the file or directory name).")
    engine: EngineName = Field("llamacpp", description="Inference engine: llamacpp, hf, vllm or fake.")
    ctx_size: int = Field(0, ge=0, description="KV-cache size in tokens, shared by all requests: one request may use all of it (prompt + completion) unless --kv-split (0: the model's training context, at most a quarter of memory; other engines: the longest request).")
    parallel: int = Field(0, ge=0, le=256, description="Sequences decoded together (continuous-batching slots); 0: auto (llama.cpp: one per 256 tokens of KV cache, 4 to 64, so 32 for an 8k cache; 8 with --kv-split and on other engines).")
    kv_split: bool = Field(False, description="llama.cpp: split the KV cache evenly into --parallel streams (each request may use ctx-size / parallel tokens), the layout before llama.cpp's unified cache; for comparison.")
    threads: int = Field(0, ge=0, description="CPU threads for inference (0: all cores, divided among --workers).")
    batch_size: int = Field(512, ge=16, description="Most tokens one engine step may process (prefill is chunked to fit).")
    max_queue: int = Field(64, ge=0, description="Requests that may wait for a slot; beyond that the server answers 503.")
    queue_timeout: float | None = Field(None, gt=0, description="Seconds a request may wait for a slot before a 503 queue_timeout (unset: no limit).")
    chat_template: str | None = Field(None, description="Jinja chat template file overriding the model's own.")
    flash_attn: Literal["auto", "on", "off"] = Field("auto", description="llama.cpp flash attention; auto: on with the unified KV cache (it skips other sequences' cells, and a row's attention does not depend on the rest of the batch, so greedy answers do not either), off with --kv-split (there off decodes faster on CPU: 37.7 vs 41.5 ms a step for 8 sequences).")
    q4_1_kernel: Q41Kernel = Field("auto", description=Q41_KERNEL_HELP)
    allow_special_tokens_in_content: bool = Field(False, description="Parse special-token strings written in message content (e.g. '<|im_end|>') as control tokens, as llmserve did before; off: content is text and cannot forge chat turns.")
    watchdog_timeout: float = Field(120.0, gt=0, description="Seconds an engine with work may go without finishing a step; then /health answers 503 and the requests waiting on it fail with 503 engine_stalled.")
    default_sampling: DefaultSampling = Field(default_factory=DefaultSampling, description=DEFAULT_SAMPLING_HELP + " With 'models:' in the config file, these apply to every model, under each model's own default_sampling.")
    lora: list[str] = Field(default_factory=list, description=LORA_HELP)
    models: list[ModelSettings] = Field(default_factory=list, description="Several models in one server (config file only); replaces the flat model flags.")
    # -- request hardening (workpool.py, server/body.py) --
    cpu_workers: int = Field(2, ge=1, le=64, description="Threads for the CPU work of requests (parsing large bodies, rendering chat templates, tokenizing), kept off the event loop.")
    cpu_queue: int = Field(256, ge=1, description="Requests whose CPU work may wait for those threads; beyond that the server answers 503.")
    max_json_depth: int = Field(64, ge=4, le=1000, description="Deepest nesting of arrays and objects a JSON body may have; deeper ones get 400.")
    # -- Ray Serve (serve_ray/, the llmserve[ray] extra) --------------------------------------------
    ray: bool = Field(False, description="Serve through Ray Serve: each model a deployment of --replicas engines, the same API in front (needs the llmserve[ray] extra).")
    ray_address: str | None = Field(None, description="With --ray: the Ray cluster to join (the address 'ray start --head' prints), or 'local' to start a cluster on this machine, on loopback (default).")
    replicas: int = Field(1, ge=1, le=1024, description="With --ray: engine replicas per model; each takes --threads CPUs (Ray's num_cpus) and has --parallel slots.")
    replica_gpus: float = Field(0, ge=0, description="With --ray: GPUs per replica (Ray's num_gpus; Ray gives each replica its own CUDA_VISIBLE_DEVICES): 1 runs one vLLM engine per GPU.")
    max_queued: int | None = Field(None, ge=1, description="With --ray: requests per model that may wait for a free replica slot; beyond that 503 with Retry-After (default: --max-queue).")
    autoscale: str | None = Field(None, description="With --ray: MIN:MAX replicas per model, scaled by Serve on requests in flight (--replicas is then the initial count).")
    ray_stream_interval: float = Field(0.05, ge=0, le=1, description="With --ray: after the first token, which is sent at once, a replica gathers tokens for up to this many seconds (or 16 tokens) per message to the ingress (fewer, larger messages: less CPU per token).")
    # -- end Ray Serve -----------------------------------------------------------------------------
    # -- operations (metrics) --
    metrics_dir: str | None = Field(
        default_factory=lambda: os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None,
        description="Directory for Prometheus multiprocess metric files, shared by the workers "
        "(default: PROMETHEUS_MULTIPROC_DIR; a temporary directory when there are several workers).",
    )

    @field_validator("lora")
    @classmethod
    def _lora_format(cls, value: list[str]) -> list[str]:
        return _check_lora(value)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [n for m in self.model_list() for n in [m.served_name(), *(a.name for a in m.adapters())]]
        if len(names) != len(set(names)):
            raise ValueError(f"served model names must be unique, got {names}")
        return self

    @model_validator(mode="after")
    def _limits_across_workers(self) -> Settings:
        if self.workers > 1 and self.rate_limits_on and not self.redis_url:
            raise ValueError(
                f"--workers {self.workers} with rate limits needs --redis-url: each worker would count "
                "requests on its own, so a key would get workers x its limit. Start a Redis server and "
                "pass --redis-url redis://127.0.0.1:6379/0, or use --workers 1."
            )
        return self

    @property
    def rate_limits_on(self) -> bool:
        """Default limits are set (per-key limits from the key store are checked at start-up)."""
        return self.rate_limit_rpm is not None or self.rate_limit_tpm is not None

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys) or self.key_db is not None

    def to_env(self) -> dict[str, str]:
        """These settings as ``LLMSERVE_*`` variables, for worker processes that rebuild them
        (unset fields are left out: the caller clears stale ``LLMSERVE_*`` variables first)."""
        env = {}
        for name, value in self.model_dump(mode="json").items():
            if value is not None:
                env[f"LLMSERVE_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        return env

    def model_list(self) -> list[ModelSettings]:
        """The served models; with several workers, a model left at ``threads: 0`` gets its
        worker's share of the cores, so the workers' compute threads do not oversubscribe them."""
        return [m if m.threads or self.workers == 1 else
                m.model_copy(update={"threads": max(1, (os.cpu_count() or 1) // self.workers)})
                for m in self._models()]

    def _models(self) -> list[ModelSettings]:
        if self.models:
            shared = self.default_sampling.given()
            return [m.model_copy(update={"default_sampling": DefaultSampling(**{**shared, **m.default_sampling.given()})})
                    for m in self.models]
        return [
            ModelSettings(
                name=self.served_model_name,
                engine=self.engine,
                path=self.model,
                ctx_size=self.ctx_size,
                parallel=self.parallel,
                kv_split=self.kv_split,
                threads=self.threads,
                batch_size=self.batch_size,
                max_queue=self.max_queue,
                queue_timeout=self.queue_timeout,
                chat_template=self.chat_template,
                flash_attn=self.flash_attn,
                q4_1_kernel=self.q4_1_kernel,
                allow_special_tokens_in_content=self.allow_special_tokens_in_content,
                watchdog_timeout=self.watchdog_timeout,
                default_sampling=self.default_sampling,
                lora=self.lora,
            )
        ]

    @classmethod
    def load(cls, overrides: dict[str, Any] | None = None, config_file: str | Path | None = None) -> Settings:
        """Settings from flags (``overrides``), then the environment, then ``config_file``."""
        file_source = _file_source(config_file)

        class _Layered(cls):  # type: ignore[valid-type,misc]
            @classmethod
            def settings_customise_sources(
                cls_,
                settings_cls: type[BaseSettings],
                init_settings: PydanticBaseSettingsSource,
                env_settings: PydanticBaseSettingsSource,
                dotenv_settings: PydanticBaseSettingsSource,
                file_secret_settings: PydanticBaseSettingsSource,
            ) -> tuple[PydanticBaseSettingsSource, ...]:
                sources = [init_settings, env_settings]
                if file_source is not None:
                    sources.append(file_source(settings_cls))
                return tuple(sources)

        layered = _Layered(**(overrides or {}))
        return cls.model_validate(layered.model_dump())


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/llmserve``, else ``~/.local/share/llmserve`` (the user's data directory)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llmserve"


def _file_source(config_file: str | Path | None):
    if config_file is None:
        return None
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.suffix in (".yaml", ".yml"):
        return lambda s: YamlConfigSettingsSource(s, yaml_file=path)
    if path.suffix == ".toml":
        return lambda s: TomlConfigSettingsSource(s, toml_file=path)
    raise ValueError(f"config file must be .yaml, .yml or .toml, got {path.name}")
