"""The schedule requests (SCHEDULE_ADD, SCHEDULE_LIST, SCHEDULE_REMOVE, SCHEDULE_PAUSE): a decoded
header (+ blob) -> typed arguments, or BadRequest naming the field.

Rule: as in requests.py, every type and range is checked here; what only the engine can judge
(the cron expression, the time zone) is checked there (engine/timing.py), also naming the field.
The payload of SCHEDULE_ADD is its blob, announced by ``payload_len`` as a SUBMIT task's is.
"""

from __future__ import annotations

from typing import Any

from shardq.errors import BadRequest
from shardq.protocol.frames import MAX_PAYLOAD, MsgType
from shardq.protocol.requests import (
    _FIELDS,
    MAX_RETRIES,
    MAX_TIMEOUT_SECONDS,
    MAX_TYPE_LEN,
    _describe,
    get_bool,
    get_int,
    get_str,
)
from shardq.schedule_specs import MISFIRE_POLICIES, NAME_PATTERN, NAME_RULE, ScheduleSpec

MAX_CRON_LEN = 200
MAX_TIMEZONE_LEN = 64
MIN_EVERY_MS = 1000  # a tick per second at most: the misfire and id logic is per tick
MAX_EVERY_MS = 366 * 24 * 3600 * 1000
MAX_GRACE_MS = 7 * 24 * 3600 * 1000


def parse_name(header: dict[str, Any]) -> str:
    name = header.get("name")
    if type(name) is not str or NAME_PATTERN.match(name) is None:
        raise BadRequest(f"name: must be {NAME_RULE}; got {_describe(name)}")
    return name


def parse_schedule_add(header: dict[str, Any], blob: bytes) -> ScheduleSpec:
    name = parse_name(header)
    cron = get_str(header, "cron", "", MAX_CRON_LEN, default=None)
    every = get_int(header, "every_ms", "", MIN_EVERY_MS, MAX_EVERY_MS, default=None)
    if (cron is None) == (every is None):
        raise BadRequest("cron, every_ms: give exactly one of them (a cron expression, or an "
                         "interval in milliseconds)")
    misfire = get_str(header, "misfire", "", 16, default="skip")
    if misfire not in MISFIRE_POLICIES:
        raise BadRequest(f"misfire: must be one of {', '.join(MISFIRE_POLICIES)}, got {_describe(misfire)}")
    payload_len = get_int(header, "payload_len", "", 0, MAX_PAYLOAD, default=0)
    if payload_len != len(blob):
        raise BadRequest(f"payload_len: the header announces {payload_len} bytes but the blob "
                         f"is {len(blob)}")
    return ScheduleSpec(
        name=name,
        type=get_str(header, "type", "", MAX_TYPE_LEN),
        payload=blob,
        cron=cron,
        every_ms=every,
        timezone=get_str(header, "timezone", "", MAX_TIMEZONE_LEN, default="UTC"),
        priority=get_int(header, "priority", "", 0, 255, default=None),
        max_retries=get_int(header, "max_retries", "", 0, MAX_RETRIES, default=None),
        timeout_seconds=get_int(header, "timeout_seconds", "", 1, MAX_TIMEOUT_SECONDS, default=None),
        misfire=misfire,
        misfire_grace_ms=get_int(header, "misfire_grace_ms", "", 0, MAX_GRACE_MS, default=60_000),
        paused=get_bool(header, "paused", "", False),
        replace=get_bool(header, "replace", "", False),
    )


def parse_schedule_list(header: dict[str, Any]) -> str | None:
    """SCHEDULE_LIST: one schedule by ``name`` (with its payload as the blob), or all."""
    return None if header.get("name") is None else parse_name(header)


def parse_schedule_remove(header: dict[str, Any]) -> str:
    return parse_name(header)


def parse_schedule_pause(header: dict[str, Any]) -> tuple[str, bool]:
    name = parse_name(header)
    paused = header.get("paused")
    if type(paused) is not bool:
        raise BadRequest(f"paused: required, true (pause) or false (resume); got {_describe(paused)}")
    return name, paused


def schedule_add_header(spec: ScheduleSpec) -> dict[str, Any]:
    """SCHEDULE_ADD's header for ``spec`` (its payload is the blob): what the clients send and
    what a shard forwards to the schedule's owner."""
    out: dict[str, Any] = {"name": spec.name, "type": spec.type, "payload_len": len(spec.payload)}
    for key in ("cron", "every_ms", "priority", "max_retries", "timeout_seconds"):
        value = getattr(spec, key)
        if value is not None:
            out[key] = value
    out.update(timezone=spec.timezone, misfire=spec.misfire, misfire_grace_ms=spec.misfire_grace_ms,
               paused=spec.paused, replace=spec.replace)
    return out


# The field checks ``requests.check_blob`` runs before it refuses a stray blob (every field of a
# message is checked before its blob's size): registered here, where the parsers live.
_FIELDS.update({MsgType.SCHEDULE_LIST: parse_schedule_list, MsgType.SCHEDULE_REMOVE: parse_schedule_remove,
                MsgType.SCHEDULE_PAUSE: parse_schedule_pause})
