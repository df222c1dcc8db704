"""The client side of the insight extensions ("history", "explain"): request headers, answers,
and the check that the server speaks the extension (HELLO ``features``), shared by Client and
AsyncClient."""

from __future__ import annotations

from typing import Any

from shardq.errors import NotFound, ShardqError
from shardq.protocol.frames import Message


class Unsupported(ShardqError):
    """The server does not speak a protocol extension this call needs (an older shardq)."""


def require(info: dict[str, Any], feature: str) -> None:
    """Raise Unsupported unless HELLO's answer ``info`` lists ``feature``."""
    if feature not in (info.get("features") or ()):
        raise Unsupported(f"the server ({info.get('server', 'unknown version')}) does not support "
                          f"{feature!r}: it is not in HELLO's features")


def history_header(task_id: str) -> dict[str, Any]:
    return {"ids": [task_id], "with_history": True}


def parse_history(msg: Message, task_id: str) -> dict[str, Any]:
    """``{"id", "type", "status", "history": {"events", "dropped", "dropped_after"}}``."""
    task = msg.header["tasks"][0]
    if task is None:
        raise NotFound(f"no task {task_id}")
    return {"id": task["id"], "type": task["type"], "status": task["status"], "history": task["history"]}


def explain_header(task_id: str) -> dict[str, Any]:
    return {"id": task_id}


def parse_explain(msg: Message) -> dict[str, Any]:
    body = dict(msg.header)
    body.pop("rid", None)
    return body
