"""A RocksDB write that fails (a full disk): the store drops what was staged, a later write works,
and the engine's memory is rebuilt to match the disk (Engine.reload)."""

from __future__ import annotations

import random

import pytest

from shardq.engine.engine import Engine, EngineSettings
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD
from shardq.specs import ResultItem, TaskSpec
from shardq.store.partitioned import PartitionedStore
from shardq.store.rocks import StoreWriteError
from shardq.task import IN_PROGRESS, PENDING

T0 = 1_700_000_000_000


class FailingDB:
    """The rocksdict DB with ``write`` failing while ``full`` is set, like a full disk. Like
    rocksdict, it consumes the batch it was given even when the write fails."""

    def __init__(self, db) -> None:
        self.db = db
        self.full = False
        self.writes = 0

    def write(self, batch, opts) -> None:
        if self.full:
            self.db.write(batch.__class__(raw_mode=True), opts)  # consume nothing real
            raise Exception("IO error: No space left on device: While appending to file: 000004.log")
        self.writes += 1
        self.db.write(batch, opts)

    def __getattr__(self, name):
        return getattr(self.db, name)


@pytest.fixture
def env(tmp_path):
    store = PartitionedStore(str(tmp_path / "data"), 1)
    fake = FailingDB(store.parts[0].db)
    store.parts[0].db = fake
    engine = Engine(store, EngineSettings(lease_ms=10_000, heartbeat_ms=5_000, max_frame=MAX_FRAME,
                                           max_payload=MAX_PAYLOAD), rng=random.Random(1))
    yield store, engine, fake
    fake.full = False
    store.parts[0].db = fake.db
    store.close()


def test_failed_commit_drops_the_batch_and_the_next_one_works(env) -> None:
    store, engine, fake = env
    kept = engine.submit([TaskSpec("t", b"a")], T0)[0]
    store.commit()
    counts = list(store.counts)
    fake.full = True
    lost = engine.submit([TaskSpec("t", b"b" * 300)], T0)[0]
    assert store.get(lost) is not None  # visible through the overlay before the commit
    with pytest.raises(StoreWriteError, match="No space left"):
        store.commit()
    assert store.staged == 0
    assert store.get(lost) is None and store.get_payload(lost) == b""
    assert store.counts == counts
    assert store.get(kept) is not None
    # The bug this replaces: the consumed batch was reused, so every later write failed.
    fake.full = False
    again = engine.submit([TaskSpec("t", b"c")], T0)[0]
    assert store.commit() == 1
    assert store.get(again).status == PENDING
    assert store.counts[PENDING] == counts[PENDING] + 1


def test_probe_raises_while_full(env) -> None:
    store, _, fake = env
    fake.full = True
    with pytest.raises(StoreWriteError):
        store.probe()
    fake.full = False
    store.probe()


def test_reload_after_a_failed_claim_puts_the_task_back(env) -> None:
    store, engine, fake = env
    tid = engine.submit([TaskSpec("t", b"x")], T0)[0]
    store.commit()
    fake.full = True
    got = engine.claim("w1", 1, None, T0 + 1)
    assert [t.id for t, _ in got] == [tid]
    with pytest.raises(StoreWriteError):
        store.commit()
    summary = engine.reload(T0 + 2)
    assert summary["pending"] == 1 and summary["in_progress"] == 0
    assert store.get(tid).status == PENDING
    assert engine.stats()["in_progress"] == 0 and tid not in engine._leases.by_id
    fake.full = False
    again = engine.claim("w2", 1, None, T0 + 3)
    assert [t.id for t, _ in again] == [tid]  # not lost from the ready heap
    store.commit()
    assert store.get(tid).worker_id == "w2"


def test_reload_after_a_failed_result_keeps_the_lease(env) -> None:
    store, engine, fake = env
    tid = engine.submit([TaskSpec("t", b"x")], T0)[0]
    store.commit()
    (task, _), = engine.claim("w1", 1, None, T0 + 1)
    store.commit()
    engine.heartbeat("w1", {}, None, T0 + 5_000)  # memory only: expires T0 + 15_000
    fake.full = True
    out = engine.result("w1", [ResultItem(tid, task.attempt, "completed", b"done")], T0 + 6_000)
    assert out[0]["status"] == "completed"
    with pytest.raises(StoreWriteError):
        store.commit()
    engine.reload(T0 + 6_001)
    assert store.get(tid).status == IN_PROGRESS
    lease = engine._leases.by_id[tid]
    # Memory had dropped the lease in the failed turn: it comes back with the record's expiry
    # (the worker's next heartbeat extends it again).
    assert (lease.worker_id, lease.attempt, lease.expires_ms) == ("w1", task.attempt, T0 + 1 + 10_000)
    assert tid in engine._leases.workers["w1"].leases
    fake.full = False
    out = engine.result("w1", [ResultItem(tid, task.attempt, "completed", b"done")], T0 + 7_000)
    store.commit()
    assert out[0]["status"] == "completed" and store.get_result(tid) == b"done"


def test_reload_forgets_a_failed_submit_and_keeps_the_others_ready(env) -> None:
    store, engine, fake = env
    ids = engine.submit([TaskSpec("t", b"1", priority=5), TaskSpec("t", b"2", priority=200)], T0)
    store.commit()
    fake.full = True
    lost = engine.submit([TaskSpec("t", b"3", priority=255)], T0)[0]
    with pytest.raises(StoreWriteError):
        store.commit()
    engine.reload(T0)
    fake.full = False
    got = engine.claim("w", 10, None, T0 + 1)
    store.commit()
    assert [t.id for t, _ in got] == [ids[1], ids[0]]  # priority order kept, the lost one gone
    assert store.get(lost) is None
    assert engine.pending_by_tier == {"high": 0, "normal": 0, "low": 0}
