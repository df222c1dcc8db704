"""The key layout of one shard's store, shared by the RocksDB store and the in-memory one.

Rule: this file says which key goes in which family, and nothing about how they are kept. Pure.

Key layout (SCHEMA_VERSION 1). ``id`` is the 16-byte UUID, integers are big-endian:

    pending, in_progress, completed,      id -> task record (task.py)
    failed, dead_letter, cancelled
    payloads                              id -> payload bytes (written once)
    results                               id -> result bytes
    idx_status                            id -> status u8
    idx_type                              type utf-8 | 0x00 | id -> b""
    idx_priority                          priority u8 | id -> b""
    idx_scheduled                         scheduled_ms u64 | id -> b""   (delayed and retrying tasks)
    idx_finished                          updated_ms u64 | id -> b""     (completed and cancelled: retention)
    metadata                              b"schema_version", b"shards", b"shard", b"counts", b"created_ms"

Bump SCHEMA_VERSION when a key or record layout changes, and add a migration
in ``store/rocks.py``'s ``init_layout`` (a data dir with a newer version is refused).
"""

from __future__ import annotations

import struct

from shardq.task import CANCELLED, COMPLETED, FAILED, PENDING, STATUS_NAMES, Task

SCHEMA_VERSION = 1
STATUS_CFS = STATUS_NAMES  # one column family per status, in status-code order
INDEX_CFS = ("idx_status", "idx_type", "idx_priority", "idx_scheduled", "idx_finished")
BLOB_CFS = ("payloads", "results")
ALL_CFS = (*STATUS_CFS, *BLOB_CFS, *INDEX_CFS, "metadata")

U64 = struct.Struct(">Q")
COUNTS = struct.Struct(">6Q")  # metadata b"counts": tasks per status code
STATUS_BYTES = tuple(bytes([s]) for s in range(6))
_FINISHED = (COMPLETED, CANCELLED)


def scheduled_key(task: Task) -> bytes | None:
    """idx_scheduled holds waiting tasks that were delayed or are retrying."""
    if task.status == FAILED or (task.status == PENDING and task.scheduled_ms > task.created_ms):
        return U64.pack(task.scheduled_ms) + task.id
    return None


def finished_key(task: Task) -> bytes | None:
    """idx_finished holds completed and cancelled tasks, by when they finished (retention)."""
    if task.status in _FINISHED:
        return U64.pack(task.updated_ms) + task.id
    return None


def type_key(task: Task) -> bytes:
    return task.type.encode() + b"\x00" + task.id


def priority_key(task: Task) -> bytes:
    return bytes((task.priority,)) + task.id


def index_keys(task: Task) -> tuple[bytes | None, bytes | None]:
    """The task's current time-index keys; pass them to ``update`` after changing it."""
    return scheduled_key(task), finished_key(task)
