"""The HTTP API's schedule bodies and answers (routes.py's /api/v1/schedules rows), as Structs:
validation and the OpenAPI document from one source, as in schema.py. The ranges are the TCP
protocol's (protocol/schedules.py); what a schema cannot say (cron xor every_ms, the cron
expression, the time zone) is checked by the parser and the engine, naming the field."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Raw, UnsetType

from shardq.http.schema import Priority, Struct, TaskId, TaskType
from shardq.protocol import requests as rq
from shardq.protocol import schedules as sq
from shardq.schedule_specs import NAME_REGEX

ScheduleName = Annotated[str, Meta(pattern=NAME_REGEX,
                                   description="A schedule's name.", examples=["nightly-report"])]
Misfire = Literal["skip", "once"]


class NewSchedule(Struct):
    """A schedule: ``cron`` (5 fields, or 6 with seconds first, read in ``timezone``) or
    ``every_ms``; each tick submits one task of ``type`` with this payload (``payload`` JSON,
    ``payload_text`` or ``payload_b64``: one at most)."""

    name: ScheduleName
    type: TaskType
    cron: Annotated[str, Meta(min_length=1, max_length=sq.MAX_CRON_LEN, examples=["*/5 * * * *"])] | UnsetType = UNSET
    every_ms: Annotated[int, Meta(ge=sq.MIN_EVERY_MS, le=sq.MAX_EVERY_MS)] | UnsetType = UNSET
    timezone: Annotated[str, Meta(min_length=1, max_length=sq.MAX_TIMEZONE_LEN, examples=["Europe/Paris"])] = "UTC"
    payload: Raw | UnsetType = UNSET
    payload_text: str | UnsetType = UNSET
    payload_b64: str | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET
    max_retries: Annotated[int, Meta(ge=0, le=rq.MAX_RETRIES)] | UnsetType = UNSET
    timeout_seconds: Annotated[int, Meta(ge=1, le=rq.MAX_TIMEOUT_SECONDS)] | UnsetType = UNSET
    misfire: Misfire = "skip"
    misfire_grace_ms: Annotated[int, Meta(ge=0, le=sq.MAX_GRACE_MS)] = 60_000
    paused: bool = False
    replace: bool = False


class Schedule(Struct, omit_defaults=False):
    """A schedule as stored, with what it did and when it fires next (``next_*``: null while
    paused). Times are epoch milliseconds; ``next_local`` is ISO 8601 in its time zone."""

    name: str
    shard: int
    type: str
    cron: str | None
    every_ms: int | None
    timezone: str
    priority: int | None
    max_retries: int | None
    timeout_seconds: int | None
    misfire: Misfire
    misfire_grace_ms: int
    payload_len: int
    paused: bool
    created_ms: int
    updated_ms: int
    last_tick_ms: int
    last_fired_ms: int | None
    last_task_id: TaskId | None
    fired: int
    misfires: int
    next_ms: int | None
    next_local: str | None
    next_utc: str | None
    payload: Any = UNSET
    payload_text: str | UnsetType = UNSET
    payload_b64: str | UnsetType = UNSET


class ScheduleOut(Struct):
    schedule: Schedule


class Schedules(Struct):
    schedules: list[Schedule]
    unavailable_shards: list[int] | UnsetType = UNSET


class ScheduleRemoved(Struct):
    name: str
    removed: bool
