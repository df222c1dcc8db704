"""Structured log lines: the process role and shard on every line, JSON when asked."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, role, shard (shard processes), logger, msg (+ exc)."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        name, _, index = role.partition("-")
        self.shard = int(index) if name == "shard" and index.isdigit() else None

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        line: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(), "role": self.role}
        if self.shard is not None:
            line["shard"] = self.shard
        line["logger"] = record.name
        line["msg"] = record.getMessage()
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()
