"""A data dir written by the previous release (SCHEMA_VERSION 1) is migrated in place at start."""

from __future__ import annotations

import logging
import os
import random

import pytest
import rocksdict as rd

from shardq.engine.engine import Engine, EngineSettings, ResultItem
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD
from shardq.store import migrate as migrate_mod
from shardq.store.layout import ALL_CFS, SCHEMA_VERSION
from shardq.store.partitioned import PartitionedStore
from shardq.task import (
    CANCELLED,
    COMPLETED,
    DEAD_LETTER,
    FAILED,
    IN_PROGRESS,
    PENDING,
    Task,
    new_ids,
)
from tests.unit.v1_layout import write_v1_data_dir

T0 = 1_700_000_000_000
BIG = bytes(range(256)) * 40  # stored beside the record


def _tasks(shard: int, shards: int) -> list[tuple[Task, bytes, bytes | None]]:
    ids = new_ids(8, shard, shards)

    def t(i: int, status: int, type_: str = "a", priority: int = 100, **kw) -> Task:
        return Task(ids[i], type_, priority, status, T0 + i, kw.pop("scheduled", T0 + i), i, 3, 300,
                    0, updated_ms=T0 + 100 + i, **kw)

    return [
        (t(0, PENDING, priority=200), b"p0", None),
        (t(1, PENDING, type_="b", scheduled=T0 + 10**9), b"", None),
        (t(2, IN_PROGRESS, attempt=1, worker_id="w", started_ms=T0 + 50,
           lease_expires_ms=T0 + 30_050), b"p2", None),
        (t(3, FAILED, retry_count=1, error="boom", attempt=1, scheduled=T0 + 5000), b"p3", None),
        (t(4, DEAD_LETTER, error="dead", attempt=4), b"p4", None),
        (t(5, COMPLETED, attempt=1), b"p5", b"result-5"),
        (t(6, CANCELLED), b"p6", None),
        (t(7, PENDING, type_="big"), BIG, None),
    ]


def settings(shards: int) -> EngineSettings:
    return EngineSettings(shards=shards, lease_ms=1000, heartbeat_ms=500, max_frame=MAX_FRAME,
                          max_payload=MAX_PAYLOAD, retention_ms=1000)


@pytest.fixture
def v1_dir(tmp_path):
    shards = 2
    expected = [_tasks(i, shards) for i in range(shards)]
    d = str(tmp_path / "data")
    write_v1_data_dir(d, shards, expected)
    return d, shards, expected


def test_a_v1_data_dir_is_migrated_at_open_and_logged(v1_dir, caplog) -> None:
    d, shards, expected = v1_dir
    caplog.set_level(logging.INFO, logger="shardq.store")
    ps = PartitionedStore(d, shards)
    try:
        assert [(m["from_version"], m["tasks"]) for m in ps.migrated] == [(1, 8), (1, 8)]
        assert sum("from schema version 1 to 2: 8 tasks" in r.getMessage() for r in caplog.records) == 2
        for part in ps.parts:
            assert part.meta_get(b"schema_version") == str(SCHEMA_VERSION).encode()
            assert sorted(part.family_names) == sorted(ALL_CFS)
        for tasks in expected:
            for task, payload, result in tasks:
                got = ps.get(task.id)
                assert got is not None and got.encode() == task.encode()
                assert ps.status_of(task.id) == task.status
                assert ps.get_payload(task.id) == payload
                assert ps.get_result(task.id) == (result or b"")
        assert ps.counts == [3 * shards, shards, shards, shards, shards, shards]
        engine = Engine(ps, settings(shards), rng=random.Random(1))
        now = T0 + 10_000
        rep = engine.recover(now)
        assert rep["leases_restored"] == shards and rep["pending"] == 3 * shards
        # the in-progress task's worker completes it after the upgrade
        leased = [tasks[2][0] for tasks in expected]
        out = engine.result("w", [ResultItem(t.id, 1, "completed") for t in leased], now)
        assert [o["status"] for o in out] == ["completed"] * shards
        ps.commit()
        # LIST_TASKS by type and by status read the new layout
        page, _ = engine.list_tasks(PENDING, "b", 0, 255, 100, None)
        assert sorted(t.id for t in page) == sorted(tasks[1][0].id for tasks in expected)
        page, _ = engine.list_tasks(DEAD_LETTER, None, 0, 255, 100, None)
        assert sorted(t.id for t in page) == sorted(tasks[4][0].id for tasks in expected)
        # retention finds the migrated finished tasks by finish time
        assert engine.retention_slice(now) == 2 * shards  # completed + cancelled (T0 + 1xx)
        ps.commit()
        assert all(ps.get(tasks[5][0].id) is None for tasks in expected)
    finally:
        ps.close()
    ps = PartitionedStore(d, shards)  # a second open migrates nothing
    try:
        assert ps.migrated == []
    finally:
        ps.close()


def test_an_interrupted_migration_runs_again_from_the_start(v1_dir, monkeypatch) -> None:
    d, shards, expected = v1_dir
    real = migrate_mod.MIGRATIONS[1]

    def crash(store):
        real(store)
        raise RuntimeError("killed mid-migration")

    monkeypatch.setitem(migrate_mod.MIGRATIONS, 1, crash)
    with pytest.raises(RuntimeError):
        PartitionedStore(d, shards)
    import gc

    gc.collect()  # the half-open store's handles keep RocksDB's LOCK
    monkeypatch.setitem(migrate_mod.MIGRATIONS, 1, real)
    ps = PartitionedStore(d, shards)
    try:
        assert [m["tasks"] for m in ps.migrated] == [8, 8]
        for tasks in expected:
            for task, _, _ in tasks:
                assert ps.get(task.id).encode() == task.encode()
        assert sorted(rd.Rdict.list_cf(os.path.join(d, "shard-0"))) == sorted(["default", *ALL_CFS])
    finally:
        ps.close()
