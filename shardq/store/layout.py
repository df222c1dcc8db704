"""The key layout of one shard's store, shared by the RocksDB store and the in-memory one.

Rule: this file says which key goes in which family, and nothing about how they are kept. Pure.

Key layout (SCHEMA_VERSION 2). ``id`` is the 16-byte UUID, integers are big-endian. The status
is byte 1 of the record (task.py), so no family or index says it a second time:

    live        id -> task record: pending, in_progress, failed, dead_letter
    done        id -> task record: completed, cancelled (what retention deletes)
    payloads    id -> payload bytes over INLINE_PAYLOAD_MAX (written once)
    results     id -> result bytes
    idx         b"t" | type utf-8 | 0x00 | id          -> b""   every task (LIST_TASKS by type)
                b"f" | updated_ms u64 | id             -> b""   completed, cancelled (retention)
                b"u" | type | 0x00 | unique_key | 0x00 | id -> b""  the task holding a unique key
    metadata    b"schema_version", b"shards", b"shard", b"counts", b"created_ms"

Why (docs/architecture.md, "Storage"; measured in docs/benchmarks.md, "Optimisation log"): a
lifecycle writes 6 keys in 3 families (SUBMIT: live + idx t; CLAIM: live, the record rewritten
in place with its lease; RESULT: live -> done + idx f), where SCHEMA_VERSION 1 wrote 11 in 7
(one family per status, and idx_status, idx_type, idx_priority, idx_scheduled, idx_finished).

How to bump SCHEMA_VERSION: change the layout here, raise the number, and add a step to
``store/migrate.py`` (``MIGRATIONS[old] = function``) that rewrites a data dir of the old
version in place; ``Store.init_layout`` runs it at start and logs it. A data dir with a newer
version than this code knows is refused.
"""

from __future__ import annotations

import struct

from shardq.task import CANCELLED, COMPLETED, Task

SCHEMA_VERSION = 2
LIVE, DONE, IDX = "live", "done", "idx"
BLOB_CFS = ("payloads", "results")
ALL_CFS = (LIVE, DONE, *BLOB_CFS, IDX, "metadata")

# The family of each status code (task.py: pending, in_progress, completed, failed,
# dead_letter, cancelled): only completed and cancelled leave ``live``.
FAMILY_OF = (LIVE, LIVE, DONE, LIVE, LIVE, DONE)
LIVE_STATUSES = tuple(s for s, f in enumerate(FAMILY_OF) if f == LIVE)

# One byte in front of every idx key says which index it belongs to.
TYPE_TAG, FINISHED_TAG, UNIQUE_TAG = b"t", b"f", b"u"
INDEX_TAGS = {"idx_type": TYPE_TAG, "idx_finished": FINISHED_TAG,
              "idx_unique": UNIQUE_TAG}  # scan_index's names

U64 = struct.Struct(">Q")
COUNTS = struct.Struct(">6Q")  # metadata b"counts": tasks per status code
_FINISHED = (COMPLETED, CANCELLED)


def finished_key(task: Task) -> bytes | None:
    """idx ``f`` holds completed and cancelled tasks, by when they finished (retention)."""
    if task.status in _FINISHED:
        return FINISHED_TAG + U64.pack(task.updated_ms) + task.id
    return None


def type_key(task: Task) -> bytes:
    return TYPE_TAG + task.type.encode() + b"\x00" + task.id


def index_key(task: Task) -> bytes | None:
    """The task's time-index key now (its finished key); pass it to ``update`` after changing it."""
    return finished_key(task)
