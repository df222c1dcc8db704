"""The HTTP API's bodies, as typed structs: the one source of both validation and the document.

Rules:
1. Every request body is a Struct here; ``msgspec`` decodes a body straight into it, checking each
   type and range, and refusing unknown fields, with an error that names the field
   (``Expected `int` <= 255 - at `$.tasks[0].priority```). openapi.py turns the same Structs into
   the OpenAPI document's schemas (``msgspec.json.schema_components``): what is documented is
   what is checked.
2. The ranges are the TCP protocol's (protocol/requests.py): one limit, two transports.
3. What a schema cannot say (at most one payload form, delay_ms or scheduled_ms) is checked by
   the route (routes.py), with a BadRequest naming the field.
4. Answers are Structs too: the document describes them, the routes build them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, UnsetType

from shardq.protocol import requests as rq
from shardq.protocol import task_options

# A task id: a UUID in canonical lowercase form, as the TCP protocol has it.
TaskId = Annotated[str, Meta(pattern="^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
                             description="A task id: a UUID in canonical lowercase 8-4-4-4-12 form.",
                             examples=["0190a3c2-7b1e-7c3a-9d2f-5e8b6a4c1d00"])]
TaskType = Annotated[str, Meta(min_length=1, max_length=rq.MAX_TYPE_LEN, examples=["email"])]
WorkerId = Annotated[str, Meta(min_length=1, max_length=rq.MAX_WORKER_ID_LEN, examples=["worker-1"])]
Priority = Annotated[int, Meta(ge=0, le=255)]
U32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]
U63 = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Status = Literal["pending", "in_progress", "completed", "failed", "dead_letter", "cancelled"]
# How payloads and results come back: ``auto`` = as JSON when they are JSON, else as text when they
# are UTF-8, else base64; the others ask for one form (base64 always works).
Encoding = Literal["auto", "json", "text", "base64"]

# One SUBMIT of the TCP protocol holds at most this many tasks; a batch over HTTP likewise.
MAX_BATCH = 100_000
MAX_RESULTS = 10_000  # one RESULT's items (protocol/requests.py)
MAX_ACTIVE = 100_000  # the ids a HEARTBEAT may list


class Struct(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


# -- producers -------------------------------------------------------------------------------

class NewTask(Struct):
    """A task to submit. Its payload is given one way at most: ``payload`` (any JSON value, stored
    as the JSON text sent), ``payload_text`` (a string, stored as UTF-8) or ``payload_b64``
    (bytes, base64). None of them: an empty payload."""

    type: TaskType
    payload: Raw | UnsetType = UNSET
    payload_text: str | UnsetType = UNSET
    payload_b64: str | UnsetType = UNSET
    priority: Priority | None = None
    delay_ms: Annotated[int, Meta(ge=0, le=rq.MAX_DELAY_MS)] | None = None
    scheduled_ms: U63 | None = None
    max_retries: Annotated[int, Meta(ge=0, le=rq.MAX_RETRIES)] | None = None
    timeout_seconds: Annotated[int, Meta(ge=1, le=rq.MAX_TIMEOUT_SECONDS)] | None = None
    depends_on: Annotated[list[TaskId], Meta(max_length=1000)] | None = None
    id: TaskId | None = None
    # Task options (docs/protocol.md, "Task options"): checked as SUBMIT checks them.
    expires_at_ms: U63 | None = None
    ttl_ms: Annotated[int, Meta(ge=1, le=task_options.MAX_TTL_MS)] | None = None
    unique_key: Annotated[str, Meta(min_length=1, max_length=task_options.MAX_UNIQUE_KEY_LEN)] | None = None
    unique_window_ms: Annotated[int, Meta(ge=0, le=task_options.MAX_UNIQUE_WINDOW_MS)] | None = None


class Batch(Struct):
    """Tasks to submit together: all are stored, or none (as one SUBMIT of the TCP protocol)."""

    tasks: Annotated[list[NewTask], Meta(min_length=1, max_length=MAX_BATCH)]


class Submitted(Struct):
    """``duplicate``: true when a task already held the unique key (``id`` is that task's)."""

    id: TaskId
    duplicate: bool = False


class SubmittedBatch(Struct):
    """``duplicates``: the positions answered with the id of a task holding their unique key."""

    ids: list[TaskId]
    duplicates: list[int] = msgspec.field(default_factory=list)


class Task(Struct, omit_defaults=False):
    """A task as the TCP protocol shows it (PROTOCOL.md, "The task, as the wire shows it"), plus
    its result when asked for (``with_result``) and its payload in a claim's answer."""

    id: TaskId
    type: str
    priority: int
    status: Status
    created_ms: int
    updated_ms: int
    scheduled_ms: int
    max_retries: int
    retry_count: int
    timeout_seconds: int
    worker_id: str | None
    lease_expires_ms: int | None
    attempt: int
    depends_on: list[TaskId]
    error: str | None
    payload_len: int
    result_len: int | None
    shard: int
    payload: Any | UnsetType = UNSET
    payload_text: str | UnsetType = UNSET
    payload_b64: str | UnsetType = UNSET
    result: Any | UnsetType = UNSET
    result_text: str | UnsetType = UNSET
    result_b64: str | UnsetType = UNSET
    expires_at_ms: int | UnsetType = UNSET  # task options, when it was submitted with them
    unique_key: str | UnsetType = UNSET
    unique_window_ms: int | UnsetType = UNSET
    dependency_results: list[dict[str, Any]] | UnsetType = UNSET  # a claim that asked for them
    dependency_results_omitted: list[TaskId] | UnsetType = UNSET


class Query(Struct):
    """Several tasks at once (QUERY_STATUS); each unknown id answers null in its place."""

    ids: Annotated[list[TaskId], Meta(min_length=1, max_length=rq.MAX_QUERY_IDS)]
    with_result: bool = False
    encoding: Encoding = "auto"


class Tasks(Struct):
    tasks: list[Task | None]


class TaskPage(Struct):
    """A page of LIST_TASKS; ``cursor`` (null on the last page) asks for the next."""

    tasks: list[Task]
    cursor: str | None


class Cancelled(Struct):
    id: TaskId
    status: Literal["cancelled"]


class Requeue(Struct):
    """Back to pending: these ``ids``, or (without ids) every task of ``status`` (and ``type``),
    ``limit`` at most."""

    ids: Annotated[list[TaskId], Meta(min_length=1, max_length=rq.MAX_QUERY_IDS)] | None = None
    status: Literal["dead_letter", "failed"] = "dead_letter"
    type: TaskType | None = None
    limit: Annotated[int, Meta(ge=1, le=rq.MAX_REQUEUE_LIMIT)] = 1000


class WireErrorBody(Struct):
    code: str
    message: str


class RequeueItem(Struct):
    id: TaskId
    status: Literal["pending"] | UnsetType = UNSET
    error: WireErrorBody | UnsetType = UNSET


class Requeued(Struct):
    requeued: int
    results: list[RequeueItem] | UnsetType = UNSET


class ShardRow(msgspec.Struct):
    """One shard's counts (GET_STATS ``shards[]``; more fields may be added)."""

    shard: int
    pending: int
    in_progress: int
    completed: int
    failed: int
    dead_letter: int
    cancelled: int
    scheduled: int
    connections: int


class Stats(msgspec.Struct):
    """GET_STATS: totals by status and tier, per shard, workers, connections (at most 1 s old)."""

    totals: dict[str, Any]
    workers: int
    connections: int
    shards: list[ShardRow]
    uptime_s: int


class Worker(msgspec.Struct):
    """A worker of the registry (GET_STATS ``worker_list``)."""

    worker_id: str
    active: int = 0
    hostname: str | None = None
    pid: int | None = None
    types: list[str] | None = None
    concurrency: int | None = None
    state: str | None = None
    cpu_percent: float | None = None
    memory_rss: int | None = None
    memory_percent: float | None = None
    first_seen_ms: int | None = None
    last_seen_ms: int | None = None
    command: Literal["quiet", "stop"] | None = None  # a standing order (extension worker_control)


class Workers(Struct):
    workers: list[Worker]


# -- workers ---------------------------------------------------------------------------------

Types = Annotated[list[TaskType], Meta(max_length=1000)]


class Register(Struct):
    hostname: Annotated[str, Meta(min_length=1, max_length=255)] | None = None
    pid: Annotated[int, Meta(ge=0, le=2**31 - 1)] | None = None
    types: Types | None = None
    concurrency: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None


class Registered(Struct):
    worker_id: str


class Claim(Struct):
    """Lease up to ``max`` ready tasks (of ``types``), waiting up to ``wait_ms`` for the first (a
    long poll). A client that disconnects while it waits leases nothing."""

    max: Annotated[int, Meta(ge=1, le=rq.MAX_CLAIM)] = 1
    wait_ms: Annotated[int, Meta(ge=0, le=rq.MAX_WAIT_MS)] = 0
    types: Types | None = None
    encoding: Encoding = "auto"
    # Each task carries its dependencies' results (protocol.md, "Dependency results"): in each
    # task, ``dependency_results`` [{id, result_len, result…}] and ``dependency_results_omitted``.
    dependency_results: bool = False


class Claimed(Struct):
    tasks: list[Task]


class ResultIn(Struct):
    """The outcome of one leased attempt: ``completed`` (with a result, given one way at most,
    as a payload is), ``failed`` (with ``error``; ``retry`` false sends it to the dead letters
    at once) or ``released`` (back to pending, no retry counted)."""

    id: TaskId
    attempt: U32
    status: Literal["completed", "failed", "released"]
    result: Raw | UnsetType = UNSET
    result_text: str | UnsetType = UNSET
    result_b64: str | UnsetType = UNSET
    error: Annotated[str, Meta(max_length=rq.MAX_ERROR_LEN)] | None = None
    retry: bool = True


class Results(Struct):
    results: Annotated[list[ResultIn], Meta(min_length=1, max_length=MAX_RESULTS)]


class ResultOut(Struct):
    id: TaskId
    status: str | UnsetType = UNSET
    error: WireErrorBody | UnsetType = UNSET


class ResultsOut(Struct):
    results: list[ResultOut]


class Heartbeat(Struct):
    """Extends this worker's leases (only those in ``active`` when given)."""

    active: Annotated[list[TaskId], Meta(max_length=MAX_ACTIVE)] | None = None
    cpu_percent: Annotated[float, Meta(ge=0)] | None = None
    memory_rss: U63 | None = None
    memory_percent: Annotated[float, Meta(ge=0)] | None = None
    state: Literal["running", "draining", "quiet", "stopping"] | None = None


class HeartbeatOut(Struct):
    lease_expires_ms: int
    lost: list[TaskId] | UnsetType = UNSET
    cancelled: list[TaskId] | UnsetType = UNSET  # extension cancel_running: stop these handlers
    command: Literal["quiet", "stop"] | UnsetType = UNSET  # extension worker_control


class WorkerCommanded(Struct):
    """A quiet/stop order recorded; the worker obeys at its next heartbeat."""

    worker_id: str
    command: Literal["quiet", "stop"]
    state: str


class Released(Struct):
    released: int


# -- operations ----------------------------------------------------------------------------

class Health(Struct):
    status: Literal["ok"]
    shard: int


class HistorySeries(Struct):
    """Column-wise points, oldest first: ``t`` (epoch seconds), the rates per second of
    submitted, completed and failed executions, and the counts at that time."""

    t: list[float]
    submitted: list[float]
    completed: list[float]
    failed: list[float]
    pending: list[int]
    in_progress: list[int]
    scheduled: list[int]
    dead_letter: list[int]


class History(Struct):
    resolution: Literal["1s", "10s"]
    series: HistorySeries


class Readiness(Struct):
    status: Literal["ready", "not ready"]
    shards: int
    not_ready: list[int]


class Problem(msgspec.Struct, omit_defaults=True):
    """An error (RFC 9457 ``application/problem+json``); ``code`` is the TCP protocol's error code."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    retry_after_ms: int | UnsetType = UNSET
    not_ready: list[int] | UnsetType = UNSET
