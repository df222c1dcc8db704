"""Request validation: a decoded header (+ blob) -> typed arguments, or BadRequest.

Rule: every range and type the protocol states is checked here, once, with a
message that names the field (``tasks[2].priority: must be an integer 0..255,
got 300``). The engine receives only valid values. Unknown fields are ignored.

Rule: the blob is exactly the sections the header announces. SUBMIT and RESULT
announce theirs, and their parsers cut the blob (``split_blob``); every other
request announces none, and ``check_blob`` (run once for every request, before
its handler) refuses a blob on those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardq.errors import BadRequest, ProtocolError, TooLarge
from shardq.protocol.frames import MAX_PAYLOAD, PROTOCOL_VERSION, MsgType, split_blob
from shardq.protocol.task_options import has_options, parse_task_options
from shardq.specs import ResultItem, TaskSpec
from shardq.task import STATUS_CODES, id_to_bytes, is_canonical_id

MAX_RID = 2**63
MAX_CLAIM = 1000
MAX_WAIT_MS = 60_000
MAX_QUERY_IDS = 1000
MAX_LIST_LIMIT = 1000
MAX_REQUEUE_LIMIT = 100_000
MAX_RETRIES = 1000
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_DELAY_MS = 10 * 365 * 24 * 3600 * 1000  # ten years: anything later is a bug on the client
MAX_TYPE_LEN = 255
# HEARTBEAT `state`: quiet and stopping come with the worker_control extension.
WORKER_STATES = ("running", "draining", "quiet", "stopping")
MAX_WORKER_ID_LEN = 255
MAX_ERROR_LEN = 64 * 1024
_MISSING = object()


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def get_int(obj: dict[str, Any], key: str, where: str, lo: int, hi: int, default: Any = _MISSING) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise BadRequest(f"{where}{key}: required (an integer {lo}..{hi})")
        return default
    if type(value) is not int or not lo <= value <= hi:
        raise BadRequest(f"{where}{key}: must be an integer {lo}..{hi}, got {_describe(value)}")
    return value


def get_str(obj: dict[str, Any], key: str, where: str, max_len: int, default: Any = _MISSING,
            allow_empty: bool = False) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise BadRequest(f"{where}{key}: required (a string)")
        return default
    if type(value) is not str or len(value) > max_len or (not value and not allow_empty):
        raise BadRequest(f"{where}{key}: must be a {'' if allow_empty else 'non-empty '}string of at "
                         f"most {max_len} characters, got {_describe(value)}")
    return value


def get_bool(obj: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        return default
    if type(value) is not bool:
        raise BadRequest(f"{where}{key}: must be true or false, got {_describe(value)}")
    return value


def get_number(obj: dict[str, Any], key: str, where: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or value < 0:
        raise BadRequest(f"{where}{key}: must be a non-negative number, got {_describe(value)}")
    return float(value)


def get_list(obj: dict[str, Any], key: str, where: str, max_len: int, default: Any = _MISSING) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise BadRequest(f"{where}{key}: required (a list)")
        return default
    if type(value) is not list or len(value) > max_len:
        raise BadRequest(f"{where}{key}: must be a list of at most {max_len} items, got {_describe(value)}")
    return value


def parse_id(value: Any, where: str) -> bytes:
    if not is_canonical_id(value):
        raise BadRequest(f"{where}: {_describe(value)} is not a task id (a UUID in canonical "
                         "lowercase 8-4-4-4-12 form)")
    return id_to_bytes(value)


def parse_ids(values: list[Any], where: str) -> list[bytes]:
    return [parse_id(v, f"{where}[{i}]") for i, v in enumerate(values)]


def parse_types(header: dict[str, Any]) -> list[str] | None:
    types: list[Any] | None = get_list(header, "types", "", 1000, default=None)
    if types is None:
        return None
    for i, t in enumerate(types):
        if type(t) is not str or not t or len(t) > MAX_TYPE_LEN:
            raise BadRequest(f"types[{i}]: must be a non-empty string, got {_describe(t)}")
    return types


# -- per message ---------------------------------------------------------------


def parse_submit(header: dict[str, Any], blob: bytes, max_payload: int = MAX_PAYLOAD) -> list[TaskSpec]:
    tasks = get_list(header, "tasks", "", 100_000)
    if not tasks:
        raise BadRequest("tasks: must hold at least one task")
    specs = []
    lengths = []
    for i, t in enumerate(tasks):
        where = f"tasks[{i}]."
        if type(t) is not dict:
            raise BadRequest(f"tasks[{i}]: must be an object, got {_describe(t)}")
        payload_len = get_int(t, "payload_len", where, 0, 2**32 - 1)
        if payload_len > max_payload:
            raise TooLarge(f"tasks[{i}].payload_len: {payload_len} bytes is over the "
                           f"{max_payload}-byte payload limit")
        lengths.append(payload_len)
        delay = get_int(t, "delay_ms", where, 0, MAX_DELAY_MS, default=None)
        scheduled = get_int(t, "scheduled_ms", where, 0, 2**63 - 1, default=None)
        if delay is not None and scheduled is not None:
            raise BadRequest(f"tasks[{i}]: give delay_ms or scheduled_ms, not both")
        deps = get_list(t, "depends_on", where, 1000, default=[])
        raw_id = t.get("id")
        specs.append(TaskSpec(
            type=get_str(t, "type", where, MAX_TYPE_LEN),
            payload=b"",
            priority=get_int(t, "priority", where, 0, 255, default=None),
            delay_ms=delay,
            scheduled_ms=scheduled,
            max_retries=get_int(t, "max_retries", where, 0, MAX_RETRIES, default=None),
            timeout_seconds=get_int(t, "timeout_seconds", where, 1, MAX_TIMEOUT_SECONDS, default=None),
            depends_on=tuple(parse_ids(deps, f"tasks[{i}].depends_on")),
            id=None if raw_id is None else parse_id(raw_id, f"tasks[{i}].id"),
            options=parse_task_options(t, where) if has_options(t) else None,
        ))
    for spec, payload in zip(specs, split_blob(blob, lengths)):
        spec.payload = payload
    return specs


def parse_claim(header: dict[str, Any]) -> tuple[str, int, int, list[str] | None]:
    return (get_str(header, "worker_id", "", MAX_WORKER_ID_LEN),
            get_int(header, "max", "", 1, MAX_CLAIM, default=1),
            get_int(header, "wait_ms", "", 0, MAX_WAIT_MS, default=0),
            parse_types(header))


_RESULT_STATUSES = ("completed", "failed", "released")


def parse_result(header: dict[str, Any], blob: bytes) -> tuple[str, list[ResultItem]]:
    worker_id = get_str(header, "worker_id", "", MAX_WORKER_ID_LEN)
    results = get_list(header, "results", "", 10_000)
    items = []
    lengths = []
    for i, r in enumerate(results):
        where = f"results[{i}]."
        if type(r) is not dict:
            raise BadRequest(f"results[{i}]: must be an object, got {_describe(r)}")
        status = r.get("status")
        if status not in _RESULT_STATUSES:
            raise BadRequest(f"results[{i}].status: must be one of completed, failed, released, "
                             f"got {_describe(status)}")
        item = ResultItem(parse_id(r.get("id"), f"results[{i}].id"),
                          get_int(r, "attempt", where, 0, 2**32 - 1), status)
        n = 0
        if status == "completed":
            n = get_int(r, "result_len", where, 0, 2**32 - 1, default=0)
        elif status == "failed":
            item.error = get_str(r, "error", where, MAX_ERROR_LEN, allow_empty=True)
            item.retry = get_bool(r, "retry", where, True)
        lengths.append(n)
        items.append(item)
    for item, data in zip(items, split_blob(blob, lengths)):
        item.result = data
    return worker_id, items


def parse_heartbeat(header: dict[str, Any]) -> tuple[str, dict[str, Any], list[bytes] | None]:
    worker_id = get_str(header, "worker_id", "", MAX_WORKER_ID_LEN)
    state = header.get("state")
    if state is not None and state not in WORKER_STATES:
        raise BadRequest(f"state: must be one of {', '.join(WORKER_STATES)}, got {_describe(state)}")
    info = {"cpu_percent": get_number(header, "cpu_percent", ""),
            "memory_rss": get_int(header, "memory_rss", "", 0, 2**63 - 1, default=None),
            "memory_percent": get_number(header, "memory_percent", ""),
            "state": state}
    active = get_list(header, "active", "", 100_000, default=None)
    return worker_id, info, None if active is None else parse_ids(active, "active")


def parse_register(header: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    worker_id = get_str(header, "worker_id", "", MAX_WORKER_ID_LEN)
    info = {"hostname": get_str(header, "hostname", "", 255, default=None),
            "pid": get_int(header, "pid", "", 0, 2**31 - 1, default=None),
            "types": parse_types(header),
            "concurrency": get_int(header, "concurrency", "", 1, 1_000_000, default=None)}
    return worker_id, info


def parse_query(header: dict[str, Any]) -> tuple[list[bytes], bool, bool]:
    ids = get_list(header, "ids", "", MAX_QUERY_IDS)
    return (parse_ids(ids, "ids"), get_bool(header, "with_result", "", False),
            get_bool(header, "with_payload", "", False))


def parse_list(header: dict[str, Any]) -> tuple[int, str | None, int, int, int, str | None]:
    status = header.get("status")
    if type(status) is not str or status not in STATUS_CODES:  # a list or object is not hashable
        raise BadRequest(f"status: must be one of {', '.join(STATUS_CODES)}, got {_describe(status)}")
    lo = get_int(header, "min_priority", "", 0, 255, default=0)
    hi = get_int(header, "max_priority", "", 0, 255, default=255)
    if lo > hi:
        raise BadRequest(f"min_priority {lo} is above max_priority {hi}")
    return (STATUS_CODES[status], get_str(header, "type", "", MAX_TYPE_LEN, default=None), lo, hi,
            get_int(header, "limit", "", 1, MAX_LIST_LIMIT, default=100),
            get_str(header, "cursor", "", 1000, default=None))


def parse_requeue(header: dict[str, Any]) -> tuple[list[bytes] | None, int, str | None, int]:
    ids = get_list(header, "ids", "", MAX_QUERY_IDS, default=None)
    status = header.get("status", "dead_letter")
    if status not in ("dead_letter", "failed"):
        raise BadRequest(f"status: must be dead_letter or failed, got {_describe(status)}")
    return (None if ids is None else parse_ids(ids, "ids"), STATUS_CODES[status],
            get_str(header, "type", "", MAX_TYPE_LEN, default=None),
            get_int(header, "limit", "", 1, MAX_REQUEUE_LIMIT, default=1000))


def parse_hello(header: dict[str, Any]) -> None:
    if header.get("protocol") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header.get('protocol')!r} is not supported "
                            f"(this server speaks {PROTOCOL_VERSION})")


def parse_cancel(header: dict[str, Any]) -> bytes:
    return parse_id(header.get("id"), "id")


def parse_worker_control(header: dict[str, Any]) -> tuple[str, str]:
    """WORKER_CONTROL (extension worker_control): the worker and ``quiet`` or ``stop``."""
    worker_id: str = get_str(header, "worker_id", "", MAX_WORKER_ID_LEN)
    action = header.get("action")
    if action not in ("quiet", "stop"):
        raise BadRequest(f"action: must be quiet or stop, got {_describe(action)}")
    return worker_id, action


def parse_deregister(header: dict[str, Any]) -> str:
    worker_id: str = get_str(header, "worker_id", "", MAX_WORKER_ID_LEN)
    return worker_id


def parse_stats(header: dict[str, Any]) -> bool:
    """GET_STATS: whether to list every worker (``workers_detail``, a shardq extension)."""
    return get_bool(header, "workers_detail", "", False)


# -- the blob ------------------------------------------------------------------------

# The requests whose header announces blob sections (their parsers check the blob's size).
BLOB_REQUESTS = frozenset((MsgType.SUBMIT, MsgType.RESULT, MsgType.SCHEDULE_ADD))

# The field checks of the requests that announce no blob: run before the blob's size is judged,
# because the contract checks every field of a message, then the blob's size (protocol.md).
_FIELDS: dict[MsgType, Callable[[dict[str, Any]], object]] = {
    MsgType.HELLO: parse_hello, MsgType.CLAIM: parse_claim, MsgType.HEARTBEAT: parse_heartbeat,
    MsgType.QUERY_STATUS: parse_query, MsgType.CANCEL: parse_cancel, MsgType.LIST_TASKS: parse_list,
    MsgType.GET_STATS: parse_stats, MsgType.REGISTER_WORKER: parse_register,
    MsgType.DEREGISTER_WORKER: parse_deregister, MsgType.REQUEUE: parse_requeue,
    MsgType.WORKER_CONTROL: parse_worker_control,
}


def check_blob(msg_type: MsgType, header: dict[str, Any], blob: bytes) -> None:
    """BadRequest when a request that announces no blob sections carries a blob (after the
    BadRequest of a bad field, if it has one). SUBMIT and RESULT: their parsers check it."""
    if not blob or msg_type in BLOB_REQUESTS:
        return
    fields = _FIELDS.get(msg_type)
    if fields is not None:
        fields(header)
    raise BadRequest(f"blob is {len(blob)} bytes but the header announces 0")


def parse_rid(header: dict[str, Any]) -> int:
    rid = header.get("rid")
    if type(rid) is not int or not 0 <= rid < MAX_RID:
        raise BadRequest(f"rid: must be an integer 0..2^63-1, got {_describe(rid)}")
    return rid
