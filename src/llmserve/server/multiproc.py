"""Prometheus multiprocess mode, set up before prometheus_client is first imported.

prometheus_client decides at import time whether metric values live in this process or in
files under ``PROMETHEUS_MULTIPROC_DIR`` that every worker writes and ``/metrics`` merges.
``prepare`` runs in the parent process of ``llmserve serve``, before any worker starts.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from llmserve.settings import Settings

logger = logging.getLogger(__name__)
ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(settings: Settings) -> Path | None:
    """The multiprocess directory (created and emptied of stale values), or None for one process.

    Used when ``settings.metrics_dir`` is set (it defaults to ``PROMETHEUS_MULTIPROC_DIR``) or
    when there are several workers (then a fresh temporary directory)."""
    workers = int(getattr(settings, "workers", 1) or 1)
    if settings.metrics_dir is None and workers <= 1:
        return None
    if "prometheus_client" in sys.modules:
        logger.warning("prometheus_client was imported before multiprocess mode was set up")
    path = Path(settings.metrics_dir) if settings.metrics_dir else Path(tempfile.mkdtemp(prefix="llmserve-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):  # values of a previous run would be summed into this one
        stale.unlink()
    os.environ[ENV] = str(path)  # read by prometheus_client here and in every worker process
    logger.info("Prometheus multiprocess metrics in %s", path)
    return path
