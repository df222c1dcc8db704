"""A frozen writer of SCHEMA_VERSION 1, the layout of shardq releases before the "layout" change,
so that tests can make a data dir as those releases left it (store/migrate.py reads it).

Rule: never change what this writes; it is what the old code (store/rocks.py ``insert`` and
``init_layout`` of version 1) wrote, key for key. Records are task.py's (RECORD_VERSION 1).
"""

from __future__ import annotations

import json
import os
import struct

import rocksdict as rd

from shardq.task import CANCELLED, COMPLETED, FAILED, INLINE_PAYLOAD_MAX, PENDING, STATUS_NAMES, Task

V1_FAMILIES = (*STATUS_NAMES, "payloads", "results", "idx_status", "idx_type", "idx_priority",
               "idx_scheduled", "idx_finished", "metadata")
_U64 = struct.Struct(">Q")
_COUNTS = struct.Struct(">6Q")


def write_v1_shard(path: str, shard: int, shards: int,
                   tasks: list[tuple[Task, bytes, bytes | None]]) -> None:
    """One shard's RocksDB of version 1 holding ``tasks`` as (task, payload, result)."""
    opts = rd.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    db = rd.Rdict(path, options=opts,
                  column_families={n: rd.Options(raw_mode=True) for n in V1_FAMILIES})
    cf = {n: db.get_column_family_handle(n) for n in V1_FAMILIES}
    b = rd.WriteBatch(raw_mode=True)
    counts = [0] * 6
    for task, payload, result in tasks:
        rid = task.id
        task.payload_len = len(payload)
        if len(payload) <= INLINE_PAYLOAD_MAX:
            task.inline_payload = payload
        else:
            b.put(rid, payload, cf["payloads"])
        if result is not None:
            task.result_len = len(result)
            b.put(rid, result, cf["results"])
        b.put(rid, task.encode(), cf[STATUS_NAMES[task.status]])
        b.put(rid, bytes([task.status]), cf["idx_status"])
        b.put(task.type.encode() + b"\x00" + rid, b"", cf["idx_type"])
        b.put(bytes((task.priority,)) + rid, b"", cf["idx_priority"])
        if task.status == FAILED or (task.status == PENDING and task.scheduled_ms > task.created_ms):
            b.put(_U64.pack(task.scheduled_ms) + rid, b"", cf["idx_scheduled"])
        if task.status in (COMPLETED, CANCELLED):
            b.put(_U64.pack(task.updated_ms) + rid, b"", cf["idx_finished"])
        counts[task.status] += 1
    meta = cf["metadata"]
    b.put(b"schema_version", b"1", meta)
    b.put(b"shard", str(shard).encode(), meta)
    b.put(b"shards", str(shards).encode(), meta)
    b.put(b"created_ms", b"1700000000000", meta)
    b.put(b"counts", _COUNTS.pack(*counts), meta)
    db.write(b)
    db.close()
    del cf, b, db


def write_v1_data_dir(data_dir: str, shards: int,
                      tasks_by_shard: list[list[tuple[Task, bytes, bytes | None]]]) -> None:
    """A whole data dir of version 1: shardq.json and shard-<i>/ each."""
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, "shardq.json"), "w") as f:
        json.dump({"shards": shards, "layout": 1}, f)
    for i in range(shards):
        write_v1_shard(os.path.join(data_dir, f"shard-{i}"), i, shards, tasks_by_shard[i])
