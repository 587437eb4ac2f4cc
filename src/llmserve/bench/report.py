"""Bench results for people (a table, a plot) and for machines (JSON), and the progress bar."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmserve.bench.runner import LevelResult, Target


KEY_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avxvnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve")


def machine() -> str:
    """The CPU model, core count and the SIMD flags that decide llama.cpp's kernels, for a bench's
    header: a figure never travels without its machine."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    simd = " ".join(f for f in KEY_FLAGS if f in flags) or "none of " + ",".join(KEY_FLAGS[:3])
    return f"CPU: {model}, {os.cpu_count()} cores; SIMD: {simd}"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def table(results: Sequence[LevelResult]) -> Table:
    t = Table(title="llmserve bench: streaming chat completions")
    for name in ("server", "concurrency", "requests", "errors", "output tok/s", "req/s",
                 "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "e2e p50 s"):
        t.add_column(name, justify="left" if name == "server" else "right")
    for r in results:
        t.add_row(r.label, str(r.concurrency), str(r.requests), str(r.errors), _num(r.output_tok_s),
                  _num(r.requests_per_s, "{:.2f}"), _num(r.ttft_p50_ms), _num(r.ttft_p99_ms), _num(r.itl_p50_ms),
                  _num(r.e2e_p50_s, "{:.2f}"))
    return t


def print_table(results: Sequence[LevelResult], file: IO[str] | None = None) -> None:
    console = Console(file=file)
    if not console.is_terminal:  # piped or captured: wide enough that no column is cut
        console = Console(file=file, width=160)
    console.print(table(results))
    for r in results:
        for sample in r.error_samples:
            console.print(f"[red]{r.label} c={r.concurrency}: {sample}[/red]")


def to_json(results: Sequence[LevelResult]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)


def plot(results: Sequence[LevelResult], path: str | Path) -> Path:
    """Output throughput and TTFT p50 against concurrency, one line per server, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r.label for r in results))
    fig, (tput, ttft) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for label in labels:
        rows = sorted((r for r in results if r.label == label), key=lambda r: r.concurrency)
        xs = [r.concurrency for r in rows]
        tput.plot(xs, [r.output_tok_s for r in rows], marker="o", label=label)
        ttft.plot(xs, [r.ttft_p50_ms if r.ttft_p50_ms is not None else float("nan") for r in rows],
                  marker="o", label=label)
    concurrencies = sorted({r.concurrency for r in results})
    for ax, title, ylabel in ((tput, "Output throughput", "tokens / s"), (ttft, "Time to first token (p50)", "ms")):
        ax.set_title(title)
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(ylabel)
        if len(concurrencies) > 1 and concurrencies[-1] / max(concurrencies[0], 1) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[tuple]:
    """``(on_level_start, on_done)`` callbacks for ``run_sweep`` drawing a bar per level on stderr."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=not enabled, transient=False)
    current: list[int] = []

    def on_level_start(target: Target, concurrency: int, total: int) -> None:
        current[:] = [progress.add_task(f"{target.label} c={concurrency}", total=total)]

    def on_done(_result) -> None:
        if current:
            progress.advance(current[0])

    with progress:
        yield on_level_start, on_done
