"""Migrations of one shard's RocksDB from an older SCHEMA_VERSION to the current one, in place.

Rules:
1. ``MIGRATIONS[v]`` rewrites a store of version ``v`` into version ``v + 1``; ``migrate`` runs
   them in order. ``Store.init_layout`` calls it when it opens an older data dir, before the
   engine reads anything, and logs what it did (from which version, how many tasks, how long).
2. A migration is safe to interrupt: it only adds the new layout's keys (idempotent puts, in
   batches) while the old families stay as they are; the version is written last, in a batch of
   its own, and only then are the old families dropped. A crash before that reruns it from the
   start on the next open; one after it leaves old families that the next open drops.
3. The record encoding (task.py, RECORD_VERSION) is not a schema version: records are copied
   byte for byte.

Version 1 (shardq up to the "layout" change): one family per status (``pending``,
``in_progress``, ``completed``, ``failed``, ``dead_letter``, ``cancelled``: id -> record),
``payloads``, ``results``, and the indexes ``idx_status`` (id -> status), ``idx_type``
(type \\0 id), ``idx_priority`` (priority id), ``idx_scheduled`` (scheduled_ms id),
``idx_finished`` (updated_ms id). Version 2 is store/layout.py's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import rocksdict as rd

from shardq.store.layout import ALL_CFS, FAMILY_OF, IDX, SCHEMA_VERSION, finished_key, type_key
from shardq.task import Task

if TYPE_CHECKING:
    from shardq.store.rocks import Store

V1_STATUS_CFS = ("pending", "in_progress", "completed", "failed", "dead_letter", "cancelled")
V1_INDEX_CFS = ("idx_status", "idx_type", "idx_priority", "idx_scheduled", "idx_finished")
_BATCH = 10_000  # records per write while migrating


def _v1_to_v2(store: Store) -> int:
    """Copy every record into ``live``/``done`` and write the ``idx`` entries; returns how
    many tasks. ``payloads``, ``results`` and ``metadata`` keep their names and keys."""
    views, cf = store._views, store._cf
    scan = rd.ReadOptions()
    scan.fill_cache(False)
    tasks = 0
    batch = rd.WriteBatch(raw_mode=True)
    for status, name in enumerate(V1_STATUS_CFS):
        if name not in views:
            continue
        target = cf[FAMILY_OF[status]]
        for raw, data in views[name].items(read_opt=scan):
            batch.put(raw, data, target)
            task = Task.decode(raw, data)
            batch.put(type_key(task), b"", cf[IDX])
            fk = finished_key(task)
            if fk is not None:
                batch.put(fk, b"", cf[IDX])
            tasks += 1
            if batch.len() >= _BATCH:
                store.db.write(batch, store._write_opts)
                batch = rd.WriteBatch(raw_mode=True)
    if batch.len():
        store.db.write(batch, store._write_opts)
    return tasks


MIGRATIONS: dict[int, Callable[[Store], int]] = {1: _v1_to_v2}


def migrate(store: Store, version: int) -> dict[str, float]:
    """Bring ``store`` from ``version`` to the current SCHEMA_VERSION; what it did."""
    t0 = time.perf_counter()
    tasks = 0
    for v in range(version, SCHEMA_VERSION):
        tasks = MIGRATIONS[v](store)
        batch = rd.WriteBatch(raw_mode=True)
        batch.put(b"schema_version", str(v + 1).encode(), store._cf["metadata"])
        store.db.write(batch, store._write_opts)
    drop_old_families(store)
    return {"from_version": version, "tasks": tasks, "seconds": round(time.perf_counter() - t0, 3)}


def drop_old_families(store: Store) -> list[str]:
    """Drop the families the current layout does not have (after a migration); which."""
    old = [n for n in store.family_names if n not in ALL_CFS]
    for name in old:
        store._views.pop(name)
        store._cf.pop(name)
        store.db.drop_column_family(name)
    store.family_names = list(ALL_CFS)
    return old

