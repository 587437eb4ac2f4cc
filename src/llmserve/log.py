"""One logging configuration, with the request id of the current request on every line."""

from __future__ import annotations

import logging
import logging.config
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("llmserve_request_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def configure_logging(level: str = "info") -> None:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": {"format": "%(asctime)s %(levelname)s %(name)s [pid %(process)d] [%(request_id)s] %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default", "filters": ["request_id"]}},
        "loggers": {
            "llmserve": {"level": level.upper()},
            "llama_cpp": {"level": "WARNING"},
            "uvicorn": {"level": level.upper()},
            "uvicorn.access": {"level": "WARNING"},
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    })
