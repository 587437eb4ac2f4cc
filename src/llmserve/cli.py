"""Command line: ``llmserve serve | chat | models | bench``. Flags are generated from ``Settings``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from llmserve import __version__
from llmserve.cli_batch import add_batch_parser, run_batch
from llmserve.cli_keys import add_keys_parser, run_keys
from llmserve.errors import LLMServeError
from llmserve.settings import ModelSettings, Settings

CLI_EXCLUDED = {"models"}
SWITCHES = {"ray"}  # boolean flags that take no value at all
CHAT_MAX_TOKENS = 512  # llmserve chat's reply cap when neither the flag nor the model's defaults set one


def _flag_type(annotation: Any) -> tuple[Any, list[str] | None]:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str, list(typing.get_args(annotation))
    if args:
        return _flag_type(args[0]) if len(args) == 1 else (str, None)
    return annotation if annotation in (int, float, str) else str, None


def add_settings_flags(parser: argparse.ArgumentParser, *, skip: set[str] = frozenset()) -> None:
    """One flag per Settings field; unset flags stay absent so env vars and the config file apply."""
    for name, field in Settings.model_fields.items():
        if name in CLI_EXCLUDED or name in skip:
            continue
        env = f"LLMSERVE_{name.upper()}"
        if _is_mapping_field(field.annotation):  # repeatable KEY=VALUE (or one JSON object)
            parser.add_argument("--" + name.replace("_", "-"), dest=name, action="append", default=argparse.SUPPRESS,
                                metavar="KEY=VALUE", help=f"{field.description} [env {env}: a JSON object]")
            continue
        if typing.get_origin(field.annotation) is list:  # repeatable flag, singular name
            flag = "--" + name.removesuffix("s").replace("_", "-")
            parser.add_argument(flag, dest=name, action="append", default=argparse.SUPPRESS,
                                help=f"{field.description} [env {env}]")
            continue
        if name in SWITCHES:  # takes no value, so MODEL_PATH may follow it ("serve --ray model.gguf")
            parser.add_argument("--" + name.replace("_", "-"), dest=name, action="store_const", const=True,
                                default=argparse.SUPPRESS, help=f"{field.description} [env {env}]")
            continue
        flag_type, choices = _flag_type(field.annotation)
        # a bare boolean flag means true ("--allow-special-tokens-in-content"); "--web-ui false" still works
        bare = {"nargs": "?", "const": "true"} if field.annotation is bool else {}
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=flag_type, choices=choices,
            default=argparse.SUPPRESS, help=f"{field.description} [env {env}; default {field.get_default(call_default_factory=True)!r}]",
            **bare,
        )
    parser.add_argument("--config", type=Path, default=None, help="YAML or TOML file with settings (lowest precedence).")


def _is_mapping_field(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def parse_mapping_flags(values: list[str], flag: str) -> dict[str, Any]:
    """``["temperature=0.2", "stop=[\"###\"]"]`` or ``['{"temperature": 0.2}']`` as one dict; a
    value is JSON when it parses as JSON, a string otherwise."""
    out: dict[str, Any] = {}
    for item in values:
        item = item.strip()
        if item.startswith("{"):
            try:
                data = json.loads(item)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{flag}: not a JSON object: {exc}") from None
            out.update(data)
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag}: expected KEY=VALUE or a JSON object, got {item!r}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def load_settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    for name, value in list(overrides.items()):
        if _is_mapping_field(Settings.model_fields[name].annotation):
            overrides[name] = parse_mapping_flags(value, "--" + name.replace("_", "-"))
    if getattr(args, "model_path", None):
        overrides["model"] = args.model_path
    return Settings.load(overrides, args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmserve", description="OpenAI-compatible LLM chat server.")
    parser.add_argument("--version", action="version", version=f"llmserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Run the OpenAI-compatible HTTP server.")
    serve.add_argument("model_path", nargs="?", metavar="MODEL_PATH", help="GGUF file or HF model directory (default: bundled SmolLM2-135M-Instruct).")
    add_settings_flags(serve, skip={"model"})

    chat = sub.add_parser("chat", help="Chat with a model in the terminal (streaming, keeps the conversation).")
    chat.add_argument("model_path", nargs="?", metavar="MODEL_PATH", help="GGUF file or HF model directory (default: bundled).")
    chat.add_argument("--system", default=None, help="System prompt.")
    chat.add_argument("--temperature", type=float, default=None,
                      help="Sampling temperature (default: the model's, as GET /v1/models shows it; 0 is greedy).")
    chat.add_argument("--max-tokens", type=int, default=None,
                      help=f"Most tokens per reply (default: the model's default max_tokens, else {CHAT_MAX_TOKENS}).")
    add_settings_flags(chat, skip={"model", "host", "port", "max_request_bytes"})

    models = sub.add_parser("models", help="List the models available on this machine, the bundled default included.")
    models.add_argument("--dir", action="append", type=Path, default=[], help="Also search this directory (repeatable).")
    models.add_argument("--json", action="store_true", help="Print JSON.")

    # -- operations: load generation against any OpenAI-compatible server --
    from llmserve.bench.cli import add_arguments as add_bench_arguments

    bench = sub.add_parser("bench", help="Benchmark OpenAI-compatible servers: throughput and latency per concurrency.")
    add_bench_arguments(bench)
    add_keys_parser(sub, add_settings_flags)  # llmserve keys create | list | revoke
    add_batch_parser(sub, add_settings_flags)  # llmserve batch run | list | status
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(load_settings(args))
        if args.command == "chat":
            return _chat(args, load_settings(args))
        if args.command == "bench":
            from llmserve.bench.cli import run as run_bench

            return run_bench(args)
        if args.command == "keys":
            return run_keys(args, load_settings(args))
        if args.command == "batch":
            return run_batch(args, load_settings(args) if args.batch_command == "run" else None)
        return _models(args)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()))
            message = error.get("msg", "invalid value").removeprefix("Value error, ")
            if error.get("type") == "extra_forbidden":
                message = "unknown setting"
            print(f"llmserve: {where + ': ' if where else ''}{message}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"llmserve: {exc}", file=sys.stderr)
        return 2
    except LLMServeError as exc:  # start-up checks (engine missing, not a model) and load failures
        print(f"llmserve: {exc.message}", file=sys.stderr)
        return 2


def _serve(settings: Settings) -> int:
    from llmserve.log import configure_logging
    from llmserve.server import multiproc, serving

    configure_logging(settings.log_level)
    if settings.ray:  # the CLI becomes the Ray driver (serve_ray/ is the only place that imports Ray)
        from llmserve.serve_ray.driver import check, serve_forever

        check(settings)  # what --ray refuses, then the same start-up checks as a plain server
        check_models(settings)
        return serve_forever(settings)
    check_worker_limits(settings)
    check_models(settings)  # before anything binds: a missing engine or a bad model path exits 2
    check_adapters(settings)  # and every --lora adapter fits its model
    warn_oversubscribed(settings)
    multiproc.prepare(settings)  # before prometheus_client is imported (by the app)
    # worker processes: uvicorn imports the app factory in each worker, which rebuilds these
    # settings from LLMSERVE_* variables (stale ones cleared first)
    for name in [k for k in os.environ if k.startswith("LLMSERVE_")]:
        del os.environ[name]
    os.environ.update(settings.to_env())
    serving.run(settings)  # SIGTERM drains (server/drain.py), then exits 0
    return 0


def warn_oversubscribed(settings: Settings) -> None:
    """Compute threads that outnumber the cores spin against each other (llama.cpp's barriers):
    a warning, since a user may mean it."""
    cores = os.cpu_count() or 1
    threads = settings.workers * sum(m.resolved_threads() for m in settings.model_list() if m.engine != "fake")
    if threads > cores:
        logging.getLogger("llmserve").warning(
            "%d worker(s) x their models' threads = %d compute threads on %d cores: decode slows badly when "
            "threads outnumber cores; lower --threads or --workers", settings.workers, threads, cores)


def check_adapters(settings: Settings) -> None:
    """Every --lora adapter fits its model, before the server binds (llama.cpp: the PEFT
    directory is converted to its cached GGUF LoRA now); else one line and exit 2."""
    from llmserve.lora import AdapterError
    from llmserve.lora.resolve import resolve

    for model in settings.model_list():
        if model.engine == "fake":
            continue
        for spec in model.adapters():
            try:
                resolve(spec, Path(model.resolved_path()), model.engine)
            except AdapterError as exc:
                raise ValueError(exc.message) from None


def check_models(settings: Settings) -> None:
    """Every model's engine imports here and its path is something that engine can load."""
    from llmserve.engines import preflight

    for model in settings.model_list():
        preflight(model)


def check_worker_limits(settings: Settings) -> None:
    """Per-key limits in the key store need shared counters too (default limits are checked by Settings)."""
    if settings.workers > 1 and not settings.redis_url and settings.key_db:
        from llmserve.server.keystore import KeyStore

        if KeyStore(settings.key_db).any_limits():
            raise ValueError(
                f"--workers {settings.workers}: keys in {settings.key_db} have rate limits, which need "
                "--redis-url so that all workers share the counters (or use --workers 1)."
            )


def _chat(args: argparse.Namespace, settings: Settings) -> int:
    from llmserve.chat_model import ChatModel
    from llmserve.log import configure_logging
    from llmserve.sampling_defaults import describe

    configure_logging("warning")
    model_settings: ModelSettings = settings.model_list()[0]
    check_models(settings)
    print(f"loading {model_settings.served_name()} ...", file=sys.stderr)
    with ChatModel(settings=model_settings) as model:
        history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
        flags = {"temperature": args.temperature, "max_tokens": args.max_tokens}
        sampling = dict(flags)
        line = describe(model.sampling_defaults, flags, by="flag")
        if args.max_tokens is None and model.sampling_defaults.values["max_tokens"] is None:
            sampling["max_tokens"] = CHAT_MAX_TOKENS
            line += f", max_tokens {CHAT_MAX_TOKENS} (llmserve chat)"
        print(f"sampling: {line}", file=sys.stderr)
        print("ready. /reset clears the conversation, /exit or Ctrl-D quits.", file=sys.stderr)
        while True:
            try:
                line = input("> ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                return 0
            if line in ("/exit", "/quit"):
                return 0
            if line == "/reset":
                history = history[:1] if args.system else []
                continue
            if not line:
                continue
            history.append({"role": "user", "content": line})
            parts = []
            try:
                for piece in model.stream_chat(history, **sampling):
                    print(piece, end="", flush=True)
                    parts.append(piece)
            except KeyboardInterrupt:
                pass
            print()
            history.append({"role": "assistant", "content": "".join(parts)})


def _models(args: argparse.Namespace) -> int:
    from llmserve.models import discover

    dirs = list(args.dir) + [Path.home() / "models", Path.home() / ".cache" / "llmserve" / "models"]
    found = discover(dirs)
    if args.json:
        print(json.dumps([{"name": m.name, "path": str(m.path), "format": m.format, "size_bytes": m.size_bytes,
                           "bundled": m.bundled} for m in found], indent=2))
        return 0
    if not found:
        print("no models found")
        return 1
    width = max(len(m.name) for m in found)
    for m in found:
        tag = " (bundled default)" if m.bundled else ""
        print(f"{m.name:<{width}}  {m.format:<4}  {m.size_bytes / 1e6:8.1f} MB  {m.path}{tag}")
    return 0
