"""How each operation's result goes on the wire: a result -> (ACK body, blob).

Rule: one small function per operation result, used by the TCP session (session.py) for its
ACKs; the operation itself (operations.py) knows nothing of the wire.
"""

from __future__ import annotations

from typing import Any

from shardq.server.claims import Claimed
from shardq.server.operations import Page, Queried
from shardq.server.worker_control import Beat

Body = tuple[dict[str, Any], bytes]


def ids(ids: list[str]) -> Body:
    duplicates = getattr(ids, "duplicates", None)  # unique keys (server/taskopts.py)
    if duplicates:
        return {"ids": list(ids), "duplicates": duplicates}, b""
    return {"ids": ids}, b""


def claimed(c: Claimed) -> Body:
    return {"tasks": c.tasks}, c.payloads


def results(results: list[dict[str, Any]]) -> Body:
    return {"results": results}, b""


def heartbeat(answer: Beat) -> Body:
    body: dict[str, Any] = {"lease_expires_ms": answer.expires}
    if answer.lost:
        body["lost"] = answer.lost
    if answer.cancelled:  # extension cancel_running
        body["cancelled"] = answer.cancelled
    if answer.command is not None:  # extension worker_control
        body["command"] = answer.command
    return body, b""


def queried(q: Queried) -> Body:
    return {"tasks": q.tasks}, q.results


def page(p: Page) -> Body:
    return {"tasks": p.tasks, "cursor": p.cursor}, b""


def as_is(body: dict[str, Any]) -> Body:
    return body, b""


def released(n: int) -> Body:
    return {"released": n}, b""
