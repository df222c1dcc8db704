"""The SUBMIT fields of expiry and unique tasks, and the CLAIM flag for dependency results:
validated once, with messages that name the field (docs/protocol.md, "Task options").

Rules:
1. A task without these fields costs nothing here: ``parse_task_options`` is called only when the
   task object has one of OPTION_FIELDS (``has_options``), and the fast SUBMIT path (typed.py)
   hands any such task to the reference path.
2. ``ttl_ms`` is made absolute (``expires_at_ms``) when the SUBMIT arrives, so that a task keeps
   one deadline however often it is forwarded, retried or recovered.
3. The owner of a unique key is a pure function of (type, key, shard count), like a task's owner
   of its id: the client, the shard that receives the SUBMIT and the owner agree without asking.
"""

from __future__ import annotations

import hashlib
from typing import Any

from shardq.clock import now_ms
from shardq.errors import BadRequest
from shardq.specs import TaskOptions

OPTION_FIELDS = ("expires_at_ms", "ttl_ms", "unique_key", "unique_window_ms")
MAX_TTL_MS = 10 * 365 * 24 * 3600 * 1000  # as MAX_DELAY_MS: anything later is a bug on the client
MAX_UNIQUE_KEY_LEN = 255
# A key is held at most this long after its task finished: the window is kept in memory and in
# the owner's index until the key is used again (docs/protocol.md).
MAX_UNIQUE_WINDOW_MS = 30 * 24 * 3600 * 1000
# CLAIM with ``dependency_results``: what the answer carries at most (docs/protocol.md).
DEP_RESULT_MAX = 64 * 1024  # one dependency's result
DEP_RESULTS_TASK_MAX = 256 * 1024  # all of one task's dependencies
DEP_RESULTS_ANSWER_MAX = 4 * 1024 * 1024  # all of one CLAIM answer


def has_options(task: dict[str, Any]) -> bool:
    return any(k in task for k in OPTION_FIELDS)


def _int(task: dict[str, Any], key: str, where: str, lo: int, hi: int) -> int | None:
    value = task.get(key)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise BadRequest(f"{where}{key}: must be an integer {lo}..{hi}, got {value!r:.60}")
    return value


def parse_task_options(task: dict[str, Any], where: str, now: int | None = None) -> TaskOptions | None:
    """The options of one SUBMIT task object (``where``: ``tasks[3].``), or None when it has none."""
    now = now_ms() if now is None else now
    expires = _int(task, "expires_at_ms", where, 0, 2**63 - 1)
    ttl = _int(task, "ttl_ms", where, 1, MAX_TTL_MS)
    if expires is not None and ttl is not None:
        raise BadRequest(f"{where[:-1]}: give expires_at_ms or ttl_ms, not both")
    if ttl is not None:
        expires = now + ttl
    elif expires is not None and expires <= now:
        raise BadRequest(f"{where}expires_at_ms: {expires} is not in the future (the server's "
                         f"clock says {now}); a task that expired already would never run")
    if expires is not None:
        scheduled = task.get("scheduled_ms")
        delay = task.get("delay_ms")
        due = scheduled if type(scheduled) is int else now + delay if type(delay) is int else now
        if due >= expires:
            raise BadRequest(f"{where[:-1]}: the task would expire ({expires}) before it is due "
                             f"({due}); it would never run")
    key = task.get("unique_key")
    window = _int(task, "unique_window_ms", where, 0, MAX_UNIQUE_WINDOW_MS)
    if key is not None:
        if type(key) is not str or not key or len(key) > MAX_UNIQUE_KEY_LEN or "\x00" in key:
            raise BadRequest(f"{where}unique_key: must be a non-empty string of at most "
                             f"{MAX_UNIQUE_KEY_LEN} characters without NUL, got {key!r:.60}")
    elif window is not None:
        raise BadRequest(f"{where}unique_window_ms: only with unique_key")
    if expires is None and key is None:
        return None
    return TaskOptions(expires, key, window or 0)


def http_task_options(task: Any, where: str) -> TaskOptions | None:
    """The options of an HTTP API task (a msgspec Struct with the same fields), checked as SUBMIT's."""
    fields = {k: getattr(task, k) for k in (*OPTION_FIELDS, "delay_ms", "scheduled_ms")
              if getattr(task, k, None) is not None}
    return parse_task_options(fields, where) if has_options(fields) else None


def unique_owner(task_type: str, key: str, shards: int) -> int:
    """The shard that decides for (type, key) (rule 3): a stable hash, not Python's ``hash``."""
    if shards <= 1:
        return 0
    digest = hashlib.blake2b(f"{task_type}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def parse_claim_options(header: dict[str, Any]) -> bool:
    """CLAIM's ``dependency_results`` flag (default false)."""
    value = header.get("dependency_results")
    if value is None:
        return False
    if type(value) is not bool:
        raise BadRequest(f"dependency_results: must be true or false, got {value!r:.60}")
    return value
