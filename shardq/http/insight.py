"""The HTTP routes of the insight extensions: a task's history and its explanation.

``InsightApi`` is a mixin of ``Api`` (api.py): each method serves one route of routes.py and
calls the same operation as the TCP protocol (server/operations.py, server/insight.py). The
answers' Structs are here too, for the OpenAPI document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msgspec import UNSET, UnsetType

from shardq.errors import NotFound
from shardq.http.schema import Status, Struct, TaskId
from shardq.protocol.requests import parse_id
from shardq.server import insight
from shardq.server.operations import settled

if TYPE_CHECKING:
    from aiohttp import web

    from shardq.server.operations import Identity, Operations


class HistoryEvent(Struct):
    """One event of a task's history; the fields after ``t_ms`` depend on ``event``
    (docs/protocol.md, "history")."""

    event: str
    t_ms: int
    key: str | UnsetType = UNSET
    attempt: int | UnsetType = UNSET
    worker_id: str | UnsetType = UNSET
    hostname: str | UnsetType = UNSET
    last_ms: int | UnsetType = UNSET
    count: int | UnsetType = UNSET
    run_ms: int | UnsetType = UNSET
    error: str | UnsetType = UNSET
    due_ms: int | UnsetType = UNSET
    reason: str | UnsetType = UNSET
    last: str | UnsetType = UNSET


class History(Struct, omit_defaults=False):
    events: list[HistoryEvent]
    dropped: int
    dropped_after: int | None


class TaskHistory(Struct):
    id: TaskId
    type: str
    status: Status
    history: History


class Explanation(Struct):
    """Why a task runs or not: ``message`` for people, ``reason`` and ``details`` for scripts."""

    id: TaskId
    type: str
    status: Status
    shard: int
    reason: str
    message: str
    details: dict[str, Any]




class InsightApi:
    ops: Operations

    async def task_history(self, who: Identity, params: dict[str, str], query: None, body: None,
                           request: web.BaseRequest) -> dict[str, Any]:
        raw = parse_id(params["id"], "id")
        q = await settled(self.ops.query(who, [raw], False, with_history=True))
        task = q.tasks[0]
        if task is None:
            raise NotFound(f"no task has id {params['id']}")
        return {"id": task["id"], "type": task["type"], "status": task["status"], "history": task["history"]}

    async def explain_task(self, who: Identity, params: dict[str, str], query: None, body: None,
                           request: web.BaseRequest) -> dict[str, Any]:
        raw = parse_id(params["id"], "id")
        answer: dict[str, Any] = await settled(insight.explain(self.ops, who, raw))
        return answer
