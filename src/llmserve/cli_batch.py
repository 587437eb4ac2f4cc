"""``llmserve batch run | list | status``: batch jobs in process (no server), or on a server.

``batch run in.jsonl -o out.jsonl`` is vLLM's ``run-batch``: it loads the model in this process
and runs the file through the same app, job store and runner a server uses (in a throwaway data
directory), so every line gets exactly what ``POST /v1/batches`` would give it. The output file
holds every line's result in input order, failures included (their ``status_code`` says so).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from llmserve.settings import Settings

SERVER_ONLY = {"host", "port", "workers", "web_ui", "redis_url", "rate_limit_rpm", "rate_limit_tpm", "key_db",
               "api_keys", "metrics_dir", "data_dir", "shutdown_timeout", "max_request_bytes", "model"}


def add_batch_parser(sub: argparse._SubParsersAction, add_settings_flags) -> None:
    batch = sub.add_parser("batch", help="Batch jobs: run a JSONL file in process, or list and inspect a server's.")
    actions = batch.add_subparsers(dest="batch_command", required=True)

    run = actions.add_parser("run", help="Run an OpenAI batch input file in this process (no server) and write the results.")
    run.add_argument("input", type=Path, help="Batch input: JSONL lines {custom_id, method: POST, url, body}.")
    run.add_argument("-o", "--output", type=Path, required=True, help="Where to write the result lines (JSONL, input order).")
    run.add_argument("--model", dest="model_path", default=None, metavar="MODEL_PATH", help="GGUF file or HF model directory (default: bundled).")
    run.add_argument("--no-progress", action="store_true", help="No progress bar.")
    add_settings_flags(run, skip=SERVER_ONLY)

    for name, help_text in (("list", "List the batches of a server (yours: the key decides)."),
                            ("status", "Show one batch of a server.")):
        p = actions.add_parser(name, help=help_text)
        if name == "status":
            p.add_argument("batch_id", metavar="ID")
        else:
            p.add_argument("--limit", type=int, default=20, help="Most batches to list (default 20).")
        p.add_argument("--url", default="http://127.0.0.1:8000", help="The server (default http://127.0.0.1:8000).")
        p.add_argument("--api-key", default=None, help="API key, when the server needs one.")
        p.add_argument("--json", action="store_true", help="Print JSON.")


def run_batch(args: argparse.Namespace, settings: Settings | None) -> int:
    if args.batch_command == "run":
        return asyncio.run(_run_file(args, settings))
    return _remote(args)


async def _run_file(args: argparse.Namespace, settings: Settings) -> int:
    from llmserve.batch.lines import ENDPOINTS, InvalidInput, parse_input
    from llmserve.batch.states import Status
    from llmserve.batch.store import JobStore
    from llmserve.log import configure_logging
    from llmserve.server.app import create_app

    configure_logging("warning")
    data = args.input.read_bytes()
    endpoint = _endpoint(data)
    if endpoint not in ENDPOINTS:
        print(f"llmserve: the first request's url must be one of {', '.join(ENDPOINTS)}", file=sys.stderr)
        return 2
    try:
        total = len(parse_input(data, endpoint, settings.batch_max_lines))
    except InvalidInput as exc:
        for error in exc.errors:
            print(f"llmserve: {args.input}: {error.message}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="llmserve-batch-") as data_dir:
        app = create_app(settings.model_copy(update={"data_dir": data_dir, "web_ui": False}))
        async with app.router.lifespan_context(app):
            await app.state.registry.wait_ready()
            if app.state.registry.failures:
                print(f"llmserve: {next(iter(app.state.registry.failures.values()))}", file=sys.stderr)
                return 1
            jobs = app.state.jobs
            source = await jobs.call(JobStore.add_file, "anonymous", "batch", args.input.name, data)
            batch = await jobs.call(JobStore.create_batch, "anonymous", endpoint, source["id"], 86400, "24h", None)
            jobs.runner.wake()
            batch = await _watch(jobs, batch["id"], total, show=not args.no_progress and sys.stderr.isatty())
            results = await jobs.call(JobStore.results, batch["id"])
    lines = [r for _, _, r, _ in results if r is not None]
    args.output.write_text("".join(line + "\n" for line in lines))
    print(f"{batch['completed']} succeeded, {batch['failed']} failed: {args.output}", file=sys.stderr)
    return 0 if batch["status"] == Status.COMPLETED.value else 1


def _endpoint(data: bytes) -> str:
    for raw in data.splitlines():
        if raw.strip():
            try:
                return str(json.loads(raw).get("url"))
            except (ValueError, AttributeError):
                return ""
    return ""


async def _watch(jobs, batch_id: str, total: int, *, show: bool) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llmserve.batch.states import ACTIVE, Status
    from llmserve.batch.store import JobStore

    with Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
                  TimeElapsedColumn(), disable=not show, transient=False) as progress:
        task = progress.add_task("lines", total=total, failed=0)
        while True:
            batch = await jobs.call(JobStore.get_batch, None, batch_id)
            progress.update(task, completed=batch["completed"] + batch["failed"], failed=batch["failed"])
            if Status(batch["status"]) not in ACTIVE:
                return batch
            await asyncio.sleep(0.2)


def _remote(args: argparse.Namespace) -> int:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    path = f"/v1/batches/{args.batch_id}" if args.batch_command == "status" else f"/v1/batches?limit={args.limit}"
    try:
        response = httpx.get(args.url.rstrip("/") + path, headers=headers, timeout=30)
    except httpx.TransportError as exc:
        print(f"llmserve: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    body = response.json()
    if response.status_code != 200:
        print(f"llmserve: {body.get('error', {}).get('message', response.text)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    for b in body["data"] if args.batch_command == "list" else [body]:
        counts = b["request_counts"]
        print(f"{b['id']}  {b['status']:<11}  {counts['completed']}/{counts['total']} done, {counts['failed']} failed  "
              f"{b['endpoint']}  output {b['output_file_id'] or '-'}  errors {b['error_file_id'] or '-'}")
    return 0
