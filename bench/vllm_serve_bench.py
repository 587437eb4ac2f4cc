"""llmserve with --engine vllm against vLLM's own OpenAI server, side by side in one run.

Same model (the bundled GGUF, converted once to safetensors as the engine does), same engine
arguments (bfloat16, enforce_eager, 8 sequences, 2048 context, 1 GiB KV cache), same streamed
load at each concurrency; the two servers run one after another. Run it with the vLLM venv:

    make install-vllm
    .venv-vllm/bin/python bench/vllm_serve_bench.py --concurrency 1,8
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from llmserve.bench import report
from llmserve.bench.runner import BenchParams, LevelResult, Target, run_sweep
from llmserve.engines.vllm.convert import hf_dir_for
from llmserve.models import bundled_model_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import PROMPTS, field_ratio, free_port, server  # noqa: E402

KV_BYTES = 1 << 30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args()
    levels = tuple(int(c) for c in args.concurrency.split(","))
    params = BenchParams(concurrency=levels, requests=args.requests, max_tokens=args.max_tokens,
                         prompts=PROMPTS, temperature=args.temperature, warmup=2)
    model_dir = hf_dir_for(bundled_model_path(), Path.home() / ".cache" / "llmserve")
    results: list[LevelResult] = []

    def sweep(label: str, url: str) -> None:
        print(f"-- {label}", file=sys.stderr)
        results.extend(asyncio.run(run_sweep([Target(label, url)], params)))

    port = free_port()
    ours = [sys.executable, "-m", "llmserve", "serve", "--engine", "vllm", "--port", str(port), "--parallel", "8",
            "--ctx-size", "2048", "--max-queue", "256", "--log-level", "warning"]
    with server("llmserve+vllm", ours, port, "/health") as (url, _):
        sweep("llmserve+vllm", url)
    port = free_port()
    theirs = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--port", str(port),
              "--dtype", "bfloat16", "--enforce-eager", "--max-num-seqs", "8", "--max-model-len", "2048",
              "--kv-cache-memory-bytes", str(KV_BYTES), "--served-model-name", "smollm2"]
    with server("vllm-server", theirs, port, "/health") as (url, _):
        sweep("vllm-server", url)

    report.print_table(results)
    for c in levels:
        print(f"c={c}: tok/s llmserve+vllm / vllm-server {field_ratio(results, 'llmserve+vllm', 'vllm-server', c, 'output_tok_s')}  "
              f"TTFT p50 vllm-server / llmserve+vllm {field_ratio(results, 'vllm-server', 'llmserve+vllm', c, 'ttft_p50_ms')}"
              "  (target: llmserve's layer costs <= 3%: both >= 0.97x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
