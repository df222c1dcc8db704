"""Request validation of the insight extensions: DLQ_GROUPS, DELETE, BULK, SEARCH, TYPE_STATS.

Rule: as requests.py: each field checked once, a BadRequest names it. The parsers return plain
values (keyword arguments for the engine's TaskFilter and SearchQuery): the codec knows no engine.
"""

from __future__ import annotations

import re
from typing import Any

from shardq.errors import BadRequest
from shardq.protocol.frames import MsgType
from shardq.protocol.requests import (
    _FIELDS,
    MAX_ERROR_LEN,
    MAX_LIST_LIMIT,
    MAX_QUERY_IDS,
    MAX_TYPE_LEN,
    _describe,
    get_bool,
    get_int,
    get_list,
    get_str,
    parse_ids,
)
from shardq.task import STATUS_CODES

MAX_BULK_LIMIT = 10_000_000  # a bulk request's default: every matching task
MAX_MS = 2**63 - 1
_HEX_PREFIX = re.compile(r"[0-9a-f-]{1,36}\Z")
_GROUP = re.compile(r"[0-9a-f]{16}\Z")
BULK_ACTIONS = ("requeue", "delete")


def _status(header: dict[str, Any], default: str, allowed: tuple[str, ...]) -> int:
    status = header.get("status", default)
    if type(status) is not str or status not in allowed:
        raise BadRequest(f"status: must be one of {', '.join(allowed)}, got {_describe(status)}")
    return STATUS_CODES[status]


def _times(header: dict[str, Any], lo_key: str, hi_key: str) -> tuple[int | None, int | None]:
    lo = get_int(header, lo_key, "", 0, MAX_MS, default=None)
    hi = get_int(header, hi_key, "", 0, MAX_MS, default=None)
    if lo is not None and hi is not None and lo > hi:
        raise BadRequest(f"{lo_key} {lo} is after {hi_key} {hi}")
    return lo, hi


def parse_type_only(header: dict[str, Any]) -> str | None:
    """DLQ_GROUPS and TYPE_STATS: an optional ``type``."""
    task_type: str | None = get_str(header, "type", "", MAX_TYPE_LEN, default=None)
    return task_type


def parse_delete(header: dict[str, Any]) -> list[bytes]:
    ids = get_list(header, "ids", "", MAX_QUERY_IDS)
    if not ids:
        raise BadRequest("ids: must name at least one task")
    return parse_ids(ids, "ids")


def parse_bulk(header: dict[str, Any]) -> tuple[str, dict[str, Any], int, bool]:
    """(action, TaskFilter keyword arguments, limit, dry_run)."""
    action = header.get("action")
    if type(action) is not str or action not in BULK_ACTIONS:
        raise BadRequest(f"action: must be one of {', '.join(BULK_ACTIONS)}, got {_describe(action)}")
    allowed = ("dead_letter", "failed") if action == "requeue" else ("dead_letter", "completed", "cancelled")
    status = _status(header, "dead_letter", allowed)
    group = get_str(header, "group", "", 16, default=None)
    if group is not None and not _GROUP.match(group):
        raise BadRequest(f"group: must be a group id of 16 hex digits (from DLQ_GROUPS), got {_describe(group)}")
    if group is not None and status != STATUS_CODES["dead_letter"]:
        raise BadRequest("group: groups are of dead letters; status must be dead_letter")
    error = get_str(header, "error", "", MAX_ERROR_LEN, default=None)
    since, until = _times(header, "since_ms", "until_ms")
    flt = {"status": status, "type": get_str(header, "type", "", MAX_TYPE_LEN, default=None),
           "group": group, "error": None if error is None else error.lower(),
           "since_ms": since, "until_ms": until}
    return (action, flt, get_int(header, "limit", "", 1, MAX_BULK_LIMIT, default=MAX_BULK_LIMIT),
            get_bool(header, "dry_run", "", False))


def parse_search(header: dict[str, Any]) -> tuple[dict[str, Any], int, str | None]:
    """(SearchQuery keyword arguments, limit, cursor)."""
    prefix = get_str(header, "id_prefix", "", 36, default=None)
    if prefix is not None:
        if not _HEX_PREFIX.match(prefix):
            raise BadRequest(f"id_prefix: must be the start of a task id (lowercase hex digits and "
                             f"dashes), got {_describe(prefix)}")
        prefix = prefix.replace("-", "")
    raw_status = header.get("status")
    statuses = None
    if raw_status is not None:
        values = raw_status if type(raw_status) is list else [raw_status]
        if not values or any(type(v) is not str or v not in STATUS_CODES for v in values):
            raise BadRequest(f"status: must be a status or a non-empty list of statuses "
                             f"({', '.join(STATUS_CODES)}), got {_describe(raw_status)}")
        statuses = frozenset(STATUS_CODES[v] for v in values)
    lo = get_int(header, "min_priority", "", 0, 255, default=0)
    hi = get_int(header, "max_priority", "", 0, 255, default=255)
    if lo > hi:
        raise BadRequest(f"min_priority {lo} is above max_priority {hi}")
    c_from, c_to = _times(header, "created_from", "created_to")
    u_from, u_to = _times(header, "updated_from", "updated_to")
    error = get_str(header, "error", "", MAX_ERROR_LEN, default=None)
    q = {"id_prefix": prefix or None, "type": get_str(header, "type", "", MAX_TYPE_LEN, default=None),
         "statuses": statuses, "min_priority": lo, "max_priority": hi, "created_from": c_from,
         "created_to": c_to, "updated_from": u_from, "updated_to": u_to,
         "error": None if error is None else error.lower()}
    return (q, get_int(header, "limit", "", 1, MAX_LIST_LIMIT, default=100),
            get_str(header, "cursor", "", 1000, default=None))


# The blob rule checks a request's fields before its blob (requests.check_blob): these are the
# field checks of the insight requests (registered here: requests.py does not import this module).
_FIELDS.update({MsgType.DLQ_GROUPS: parse_type_only, MsgType.DELETE: parse_delete, MsgType.BULK: parse_bulk,
                MsgType.SEARCH: parse_search, MsgType.TYPE_STATS: parse_type_only})
