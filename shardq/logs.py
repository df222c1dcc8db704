"""Structured log lines: the process role and shard on every line, JSON when asked."""

from __future__ import annotations

import logging
import time

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, role, logger, msg (+ exc when there is one)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "role": self.role, "logger": record.name,
                "msg": record.getMessage()}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()
