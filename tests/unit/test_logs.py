"""shardq.logs: JSON lines carry the process role, and the shard index on shard processes."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from shardq.logs import JsonFormatter


def record(msg: str = "worker %s is dead", *args: object) -> logging.LogRecord:
    return logging.LogRecord("shardq.coordinator", logging.WARNING, __file__, 1, msg, args or ("w-1",), None)


def test_a_shard_line_has_role_and_shard() -> None:
    line = orjson.loads(JsonFormatter("shard-3").format(record()))
    assert line["role"] == "shard-3" and line["shard"] == 3
    assert line["level"] == "warning" and line["logger"] == "shardq.coordinator"
    assert line["msg"] == "worker w-1 is dead"
    assert line["ts"].endswith("Z") and len(line["ts"]) == len("2025-01-06T14:03:22.481Z")
    assert list(line) == ["ts", "level", "role", "shard", "logger", "msg"]


@pytest.mark.parametrize("role", ["coordinator", "supervisor", "acceptor", "worker", "shard-x", "shard"])
def test_other_roles_have_no_shard_field(role: str) -> None:
    line = orjson.loads(JsonFormatter(role).format(record()))
    assert line["role"] == role and "shard" not in line


def test_a_traceback_goes_in_exc() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("shardq.shard", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = orjson.loads(JsonFormatter("shard-0").format(rec))
    assert "ValueError: boom" in line["exc"] and line["shard"] == 0
