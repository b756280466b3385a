"""Structured JSON logs, one object per line, carrying the run and request ids."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

run_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("run_id", default="")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        run_id = getattr(record, "run_id", "") or run_id_var.get()
        request_id = getattr(record, "request_id", "") or request_id_var.get()
        if run_id:
            entry["run_id"] = run_id
        if request_id:
            entry["request_id"] = request_id
        for key in ("method", "code", "duration_ms", "peer", "episode"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(service: str, level: str = "INFO") -> None:
    """Route every logger to stderr as JSON lines; called once by each service's main."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
