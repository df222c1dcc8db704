"""Every route of the HTTP API, as data: the router and the OpenAPI document both read this table.

Rules:
1. A route names its method, path, the operation that serves it (a method of ``Api``, api.py), its
   query parameters (a Struct: each field is one parameter), its body and answer (Structs of
   schema.py), its success status, and the error statuses it can answer. Nothing else
   describes a route: openapi.py renders this table, ``Router`` matches against it.
2. Paths are templates (``/api/v1/tasks/{id}``); a ``{name}`` is one path segment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import unquote

from msgspec import UNSET, Meta, UnsetType

from shardq.http import control_schema as cs
from shardq.http import insight as ins
from shardq.http import schedule_schema as ss
from shardq.http import schema as s
from shardq.http.insight_routes import ROUTE_ROWS as INSIGHT_ROUTE_ROWS
from shardq.protocol import requests as rq

API = "/api/v1"


# -- query parameters: one Struct per route that has them --------------------------------------

class ListQuery(s.Struct):
    """LIST_TASKS: tasks of one status, oldest first, a page at a time."""

    status: s.Status
    type: s.TaskType | UnsetType = UNSET
    min_priority: s.Priority = 0
    max_priority: s.Priority = 255
    limit: Annotated[int, Meta(ge=1, le=rq.MAX_LIST_LIMIT)] = 100
    cursor: Annotated[str, Meta(min_length=1, max_length=1000)] | UnsetType = UNSET


class GetQuery(s.Struct):
    with_result: bool = False
    encoding: s.Encoding = "auto"


class StatsQuery(s.Struct):
    pass


class HistoryQuery(s.Struct):
    """The broker's recent throughput and depth (server/history.py)."""

    resolution: Literal["1s", "10s"] = "1s"


# Descriptions of query parameters and path parameters (the document's ``description``).
PARAM_DOCS = {
    "status": "Only tasks of this status.",
    "type": "Only tasks of this type.",
    "min_priority": "Only tasks of at least this priority.",
    "max_priority": "Only tasks of at most this priority.",
    "limit": "At most this many tasks on the page (a page may hold fewer and still have a cursor).",
    "cursor": "The `cursor` of the previous page; omit it for the first page.",
    "with_result": "Include the task's result (`result`, `result_text` or `result_b64`).",
    "encoding": "How payloads and results come back: `auto` (JSON if they are JSON, else text if "
                "UTF-8, else base64), `json`, `text` or `base64` (each falling back to base64).",
    "id": "The task's id.",
    "worker_id": "The worker's id (chosen by the worker; unique among live workers).",
    "task_type": "The task type (a paused or limited type, or one to pause or limit).",
    "resolution": "`1s`: one point a second over the last 10 minutes; `10s`: one point per 10 s "
                  "over the last hour.",
    "name": "The schedule's name.",
}

# The statuses every authenticated route can answer, beyond its own.
COMMON_ERRORS = (400, 401, 403, 503)


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    operation: str  # the Api method that serves it; also the OpenAPI operationId
    tag: str
    summary: str
    answer: type
    status: int = 200
    body: type | None = None
    body_required: bool = True
    query: type | None = None
    errors: tuple[int, ...] = ()
    auth: bool = True
    content_type: str = "application/json"


T = "/tasks"
W = "/workers/{worker_id}"
ROUTES: tuple[Route, ...] = (
    # producers
    # 404: a task in depends_on does not exist (nothing of the batch is stored).
    Route("POST", API + T, "submit_task", "tasks", "Submit one task", s.Submitted, 201,
          body=s.NewTask, errors=(404, 413, 429)),
    Route("POST", API + T + "/batch", "submit_batch", "tasks",
          "Submit a batch of tasks: all are stored, or none", s.SubmittedBatch, 201,
          body=s.Batch, errors=(404, 413, 429)),
    Route("GET", API + T + "/{id}", "get_task", "tasks", "Get a task (with its result when asked)",
          s.Task, query=GetQuery, errors=(404, 413)),
    Route("POST", API + T + "/query", "query_tasks", "tasks",
          "Get several tasks by id (null for each unknown id)", s.Tasks, body=s.Query, errors=(413,)),
    Route("GET", API + T, "list_tasks", "tasks", "List tasks of one status, a page at a time",
          s.TaskPage, query=ListQuery),
    Route("POST", API + T + "/{id}/cancel", "cancel_task", "tasks",
          "Cancel a task that is not finished (a running one: its worker is told to stop)",
          s.Cancelled, errors=(404, 409)),
    # insight (http/insight.py)
    Route("GET", API + T + "/{id}/history", "task_history", "tasks",
          "A task's history: submitted, claims, heartbeats, failures, retries, reclaims, outcome",
          ins.TaskHistory, errors=(404,)),
    Route("GET", API + T + "/{id}/explain", "explain_task", "tasks",
          "Why a task is (not) running, from the broker's live state", ins.Explanation, errors=(404,)),
    Route("POST", API + T + "/requeue", "requeue", "tasks",
          "Send dead-letter (or failed) tasks back to pending: by ids, or by status and type",
          s.Requeued, body=s.Requeue),
    Route("GET", API + "/stats", "stats", "operators", "Counts by status, tier and shard",
          s.Stats),
    Route("GET", API + "/stats/history", "stats_history", "operators",
          "Throughput (per second) and depth over the last 10 minutes or hour", s.History,
          query=HistoryQuery),
    Route("GET", API + "/workers", "list_workers", "operators", "The workers the broker knows",
          s.Workers),
    Route("POST", API + W + "/quiet", "quiet_worker", "operators",
          "Quiet a worker: it stops claiming and finishes what it holds", s.WorkerCommanded,
          errors=(404,)),
    Route("POST", API + W + "/stop", "stop_worker", "operators",
          "Stop a worker: quiet, then it exits once drained (or after its shutdown timeout)",
          s.WorkerCommanded, errors=(404,)),
    # workers
    Route("PUT", API + W, "register_worker", "workers", "Register a worker (or update it)",
          s.Registered, body=s.Register, body_required=False),
    Route("POST", API + W + "/claim", "claim", "workers",
          "Lease ready tasks, waiting up to wait_ms for one (long poll)", s.Claimed,
          body=s.Claim, body_required=False, errors=(413,)),
    Route("POST", API + W + "/results", "results", "workers",
          "Report the outcomes of leased attempts (per item: its new status, or its error)",
          s.ResultsOut, body=s.Results, errors=(413,)),
    Route("POST", API + W + "/heartbeat", "heartbeat", "workers",
          "Extend this worker's leases; names the ones it lost", s.HeartbeatOut,
          body=s.Heartbeat, body_required=False),
    Route("DELETE", API + W, "deregister_worker", "workers",
          "The worker leaves: its leases go back to pending at once", s.Released),
    # per-type controls (feature "type-controls": http/control_api.py)
    Route("POST", API + "/controls/{task_type}/pause", "pause_type", "operators",
          "Stop handing out tasks of a type, on every shard (submits go on)", cs.ControlChanged),
    Route("POST", API + "/controls/{task_type}/resume", "resume_type", "operators",
          "Hand out tasks of a paused type again", cs.ControlChanged, errors=(409,)),
    Route("PATCH", API + "/controls/{task_type}/limits", "set_limits", "operators",
          "Set or clear a type's broker-wide concurrency cap and rate", cs.ControlChanged, body=cs.Limits),
    Route("GET", API + "/controls", "get_controls", "operators",
          "Paused and limited types, with each shard's live numbers", cs.Controls,
          query=cs.ControlsQuery, errors=(404,)),
    # schedules (server/schedule_ops.py); 409: a schedule of that name exists (add it with replace)
    Route("POST", API + "/schedules", "add_schedule", "schedules",
          "Add a periodic schedule: each tick submits one task", ss.ScheduleOut, 201,
          body=ss.NewSchedule, errors=(409, 413)),
    Route("GET", API + "/schedules", "list_schedules", "schedules",
          "Every schedule, with its next and last runs", ss.Schedules),
    Route("GET", API + "/schedules/{name}", "get_schedule", "schedules",
          "One schedule, with its payload", ss.Schedule, errors=(404,)),
    Route("DELETE", API + "/schedules/{name}", "remove_schedule", "schedules",
          "Remove a schedule (the tasks it submitted stay)", ss.ScheduleRemoved, errors=(404,)),
    Route("POST", API + "/schedules/{name}/pause", "pause_schedule", "schedules",
          "Pause a schedule: it fires nothing until resumed", ss.ScheduleOut, errors=(404,)),
    Route("POST", API + "/schedules/{name}/resume", "resume_schedule", "schedules",
          "Resume a schedule, from its next tick", ss.ScheduleOut, errors=(404,)),
    # operations (no auth)
    Route("GET", "/healthz", "healthz", "operations", "This process is up", s.Health, auth=False),
    Route("GET", "/readyz", "readyz", "operations",
          "Every shard is serving (503 names those that are not)", s.Readiness, errors=(503,),
          auth=False),
    Route("GET", API + "/openapi.json", "openapi", "operations", "This document", dict, auth=False),
)
ROUTES += tuple(Route(**row) for row in INSIGHT_ROUTE_ROWS)  # dlq groups, delete, bulk, search, types
BY_OPERATION = {r.operation: r for r in ROUTES}


class Router:
    """Method + path -> (route, path parameters); or why not (404 no such path, 405 method)."""

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self.exact: dict[str, dict[str, Route]] = {}
        self.patterns: list[tuple[re.Pattern[str], dict[str, Route]]] = []
        by_path: dict[str, dict[str, Route]] = {}
        for route in routes:
            by_path.setdefault(route.path, {})[route.method] = route
        for path, methods in by_path.items():
            if "{" not in path:
                self.exact[path] = methods
            else:
                regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
                self.patterns.append((re.compile(f"^{regex}$"), methods))

    def methods(self, raw_path: str) -> tuple[dict[str, Route], dict[str, str]] | None:
        """The routes of ``raw_path`` by method, and its path parameters (decoded)."""
        methods = self.exact.get(raw_path)
        if methods is not None:
            return methods, {}
        for regex, methods in self.patterns:
            m = regex.match(raw_path)
            if m is not None:
                return methods, {k: unquote(v) for k, v in m.groupdict().items()}
        return None


def path_params(route: Route) -> list[str]:
    return re.findall(r"\{(\w+)\}", route.path)

