"""Tiles or vec_dot, per batch size, as measured on this CPU.

llmserve's Q4_1 tiles (patches/llama.cpp) unpack a weight block once for up to 4 sequences,
which wins big for a batch; for one sequence ggml's own vec_dot can be faster, by how much
depending on the CPU (seen: the tiles 1.06x faster on one, 0.86x on a Zen 4). So the engine
measures both kernels on the loaded model for a ladder of batch sizes, once per CPU, model and
thread count, keeps the answer in a small JSON cache, and sets the patch's per-size mask: each
batch size runs the kernel that measured faster there (a size between two measured ones follows
the smaller; sizes past the ladder follow its last rung).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import llama_cpp as ll

from llmserve.engines.llamacpp import kernels
from llmserve.engines.llamacpp.model import LlamaContext, LlamaModel

logger = logging.getLogger(__name__)

LADDER = (1, 2, 3, 4, 6, 8, 16, 32)  # past 32 (prefill chunks) the 32 rung decides
Q4_1_FILE_TYPE = "3"  # LLAMA_FTYPE_MOSTLY_Q4_1 in general.file_type


def mask_from(timings: dict[int, tuple[float, float]]) -> int:
    """The patch's column mask from ``{batch size: (tiles ms, vec_dot ms)}``: bit ``n - 1`` set
    where the tiles were at least as fast as vec_dot at the largest measured size ``<= n``."""
    sizes = sorted(timings)
    mask = 0
    for n in range(1, 65):
        rung = max((s for s in sizes if s <= n), default=sizes[0])
        tiles, stock = timings[rung]
        if tiles <= stock:
            mask |= 1 << (n - 1)
    return mask


def _cpu() -> str:
    """The CPU model and its feature flags (the build is -march=native)."""
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = value.strip()
                break
    except OSError:
        pass
    return f"{model or platform.processor()}|{flags}"


def cache_key(model_path: str, n_threads: int) -> str:
    path = Path(model_path)
    facts = [_cpu(), ll.__version__, path.name, str(path.stat().st_size), str(n_threads)]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def load(model_path: str, n_threads: int, cache_dir: Path) -> dict[int, tuple[float, float]]:
    """The cached measurements for this CPU, model and thread count; empty when there are none."""
    path = cache_dir / f"q4_1-{cache_key(model_path, n_threads)}.json"
    try:
        return {int(k): (float(v[0]), float(v[1])) for k, v in json.loads(path.read_text())["timings"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


def cpu_model() -> str:
    return _cpu().partition("|")[0]


def measure(model: LlamaModel, n_threads: int, sizes: Sequence[int] = LADDER, *, steps: int = 2,
            repeats: int = 2, clock: Callable[[], float] = time.perf_counter) -> dict[int, tuple[float, float]]:
    """Best-of-``repeats`` ms of one decode call of ``n`` tokens (one per sequence), tiles then
    vec_dot alternating, for every ``n`` in ``sizes``, on a scratch context."""
    n_max = max(sizes)
    ctx = LlamaContext(model, n_ctx=n_max * 32, n_seq=n_max, n_batch=max(n_max, 64), n_threads=n_threads)
    batch = ll.llama_batch_init(n_max, 0, 1)
    out: dict[int, tuple[float, float]] = {}
    try:
        for n in sizes:
            best = {True: float("inf"), False: float("inf")}
            for _ in range(repeats):
                for tiles in (True, False):
                    kernels.set_q4_1_tiles(tiles)
                    ll.llama_memory_clear(ctx.memory, True)
                    for step in range(steps + 1):
                        for s in range(n):
                            batch.token[s], batch.pos[s], batch.n_seq_id[s] = 100 + s + step, step, 1
                            batch.seq_id[s][0], batch.logits[s] = s, True
                        batch.n_tokens = n
                        t0 = clock()
                        if ll.llama_decode(ctx.ptr, batch) != 0:
                            raise RuntimeError("llama_decode failed while measuring kernels")
                        if step:  # the first call warms caches
                            best[tiles] = min(best[tiles], (clock() - t0) * 1000)
            out[n] = (best[True], best[False])
    finally:
        kernels.set_q4_1_tiles(True)
        ll.llama_batch_free(batch)
        ctx.close()
    return out


def configure(model: LlamaModel, model_path: str, n_threads: int, mode: str, cache_dir: Path) -> None:
    """Sets the Q4_1 kernel per batch size: ``mode`` ``auto`` (measured once, cached), ``tiles``
    or ``stock``. Does nothing on a stock build or a model that is not mostly Q4_1."""
    if not kernels.q4_1_tiles_available():
        return
    if mode != "auto":
        kernels.set_q4_1_tiles(mode == "tiles")
        logger.info("Q4_1 kernel: %s for every batch size (--q4-1-kernel)", "tiles" if mode == "tiles" else "vec_dot")
        return
    if model.metadata.get("general.file_type") != Q4_1_FILE_TYPE:
        return
    timings = load(model_path, n_threads, cache_dir)
    if not timings:
        t0 = time.monotonic()
        timings = measure(model, n_threads)
        path = cache_dir / f"q4_1-{cache_key(model_path, n_threads)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"cpu": cpu_model(), "threads": n_threads,
                                    "timings": {str(k): v for k, v in timings.items()}}, indent=1))
        logger.info("measured the Q4_1 kernels on this CPU in %.1f s (cached in %s)", time.monotonic() - t0, path)
    mask = mask_from(timings)
    if not kernels.set_q4_1_columns(mask):
        return
    stock = [n for n in sorted(timings) if not mask >> (n - 1) & 1]
    logger.info("Q4_1 kernel per batch size: vec_dot for %s, tiles for the rest",
                ", ".join(map(str, stock)) if stock else "none")
