"""The HTTP routes of the insight extensions: their bodies and answers (Structs, as schema.py's)
and the rows routes.py turns into ``Route``s (this module does not import routes.py: it is
imported by it). The handlers are ``TriageApi``'s (insight_api.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, UnsetType

from shardq.http import schema as s
from shardq.protocol import insight as iq
from shardq.protocol import requests as rq

Ms = Annotated[int, Meta(ge=0, le=iq.MAX_MS)]
Text = Annotated[str, Meta(min_length=1, max_length=rq.MAX_ERROR_LEN)]


class TypeQuery(s.Struct):
    type: s.TaskType | UnsetType = UNSET


class DeadGroup(s.Struct, omit_defaults=False):
    group: str
    type: str
    error: str
    example: str
    count: int
    first_ms: int | None
    last_ms: int | None
    sample: s.TaskId | None


class DeadGroups(s.Struct):
    """Dead letters grouped by task type and normalised error, largest first."""

    groups: list[DeadGroup]
    total: int


class Delete(s.Struct):
    """Delete these finished tasks (completed, cancelled, dead_letter)."""

    ids: Annotated[list[s.TaskId], Meta(min_length=1, max_length=rq.MAX_QUERY_IDS)]


class DeleteItem(s.Struct):
    id: s.TaskId
    status: Literal["deleted"] | UnsetType = UNSET
    error: s.WireErrorBody | UnsetType = UNSET


class Deleted(s.Struct):
    deleted: int
    results: list[DeleteItem]


class Bulk(s.Struct):
    """Requeue or delete every task of ``status`` that matches all the filters given (``group``:
    a dead-letter group; ``error``: a case-insensitive substring; ``since_ms``/``until_ms``: when
    it reached its status), up to ``limit``; with ``dry_run`` only count them."""

    action: Literal["requeue", "delete"]
    status: Literal["dead_letter", "failed", "completed", "cancelled"] = "dead_letter"
    group: Annotated[str, Meta(pattern="^[0-9a-f]{16}$")] | UnsetType = UNSET
    type: s.TaskType | UnsetType = UNSET
    error: Text | UnsetType = UNSET
    since_ms: Ms | UnsetType = UNSET
    until_ms: Ms | UnsetType = UNSET
    limit: Annotated[int, Meta(ge=1, le=iq.MAX_BULK_LIMIT)] | UnsetType = UNSET
    dry_run: bool = False


class BulkDone(s.Struct):
    action: Literal["requeue", "delete"]
    dry_run: bool
    matched: int | UnsetType = UNSET
    requeued: int | UnsetType = UNSET
    deleted: int | UnsetType = UNSET


class Search(s.Struct):
    """Tasks matching every field given, one bounded page (``cursor``: the previous page's)."""

    id_prefix: Annotated[str, Meta(pattern="^[0-9a-f-]{1,36}$")] | UnsetType = UNSET
    type: s.TaskType | UnsetType = UNSET
    status: s.Status | Annotated[list[s.Status], Meta(min_length=1)] | UnsetType = UNSET
    min_priority: s.Priority = 0
    max_priority: s.Priority = 255
    created_from: Ms | UnsetType = UNSET
    created_to: Ms | UnsetType = UNSET
    updated_from: Ms | UnsetType = UNSET
    updated_to: Ms | UnsetType = UNSET
    error: Text | UnsetType = UNSET
    limit: Annotated[int, Meta(ge=1, le=rq.MAX_LIST_LIMIT)] = 100
    cursor: Annotated[str, Meta(min_length=1, max_length=1000)] | UnsetType = UNSET


class SearchPage(s.Struct, omit_defaults=False):
    """A page; ``cursor`` null only when the search is done (a page may be short, even empty)."""

    tasks: list[s.Task]
    cursor: str | None
    scanned: int


class Percentiles(s.Struct, omit_defaults=False):
    p50: float | None
    p95: float | None
    p99: float | None
    count: int


class TypeFigure(s.Struct, omit_defaults=False):
    type: str
    pending: int
    in_progress: int
    failed: int
    dead_letter: int
    completed_last_minute: int
    oldest_pending_age_s: float | None
    throughput_per_s: float
    run_time_s: Percentiles
    queue_wait_s: Percentiles


class TypeFigures(s.Struct):
    """Per task type: depth, oldest pending, throughput, run time and queue wait percentiles."""

    types: list[TypeFigure]
    window_s: list[int]
    shards_missing: list[int] | UnsetType = UNSET


API = "/api/v1"
# Rows of routes.Route (method, path, operation, tag, summary, answer, and the optional fields).
ROUTE_ROWS: tuple[dict[str, Any], ...] = (
    {"method": "GET", "path": API + "/dlq/groups", "operation": "dlq_groups", "tag": "operators",
     "summary": "Dead letters grouped by task type and normalised error", "answer": DeadGroups,
     "query": TypeQuery},
    {"method": "POST", "path": API + "/tasks/delete", "operation": "delete_tasks", "tag": "tasks",
     "summary": "Delete finished tasks by id (per id: deleted, or its error)", "answer": Deleted,
     "body": Delete},
    {"method": "POST", "path": API + "/tasks/bulk", "operation": "bulk", "tag": "operators",
     "summary": "Requeue or delete by dead-letter group or filter, or count them (dry_run)",
     "answer": BulkDone, "body": Bulk},
    {"method": "POST", "path": API + "/tasks/search", "operation": "search", "tag": "tasks",
     "summary": "Find tasks by id prefix, type, status, priority, times and error text (paged)",
     "answer": SearchPage, "body": Search, "body_required": False},
    {"method": "GET", "path": API + "/types", "operation": "type_stats", "tag": "operators",
     "summary": "Per task type figures", "answer": TypeFigures, "query": TypeQuery},
)
