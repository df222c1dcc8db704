"""The RocksDB store, the partitioned facade, and the engine's recovery from them."""

from __future__ import annotations

import os
import random
import struct

import pytest

from shardq.engine.engine import Engine, EngineSettings, ResultItem, TaskSpec
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD
from shardq.store.partitioned import (
    LAYOUT_FILE,
    PartitionedStore,
    record_shards,
    recorded_shards,
    resolve_shards,
)
from shardq.store.rocks import Store, StoreError, StoreSettings
from shardq.task import (
    CANCELLED,
    COMPLETED,
    DEAD_LETTER,
    FAILED,
    IN_PROGRESS,
    PENDING,
    Task,
    new_ids,
    owner_of,
)

T0 = 1_700_000_000_000
U64 = struct.Struct(">Q")


def settings(shards: int, **kw) -> EngineSettings:
    base = dict(shards=shards, lease_ms=1000, heartbeat_ms=500, max_frame=MAX_FRAME,
                max_payload=MAX_PAYLOAD)
    base.update(kw)
    return EngineSettings(**base)


class Node:
    """A store + engine that can be 'restarted' (closed and reopened) in place."""

    def __init__(self, path: str, shards: int = 1, **kw) -> None:
        self.path = path
        self.shards = shards
        self.settings = settings(shards, **kw)
        self.now = T0
        self.store = PartitionedStore(path, shards)
        self.engine = Engine(self.store, self.settings, rng=random.Random(1))

    def restart(self, advance: int = 0) -> dict:
        self.store.close()
        self.now += advance
        self.store = PartitionedStore(self.path, self.shards)
        self.engine = Engine(self.store, self.settings, rng=random.Random(2))
        return self.engine.recover(self.now)

    def submit(self, *specs: TaskSpec, home: int | None = None) -> list[bytes]:
        ids = self.engine.submit(list(specs), self.now, home=home)
        self.store.commit()
        return ids

    def claim(self, worker: str = "w", n: int = 1, types=None) -> list[Task]:
        got = self.engine.claim(worker, n, types, self.now)
        self.store.commit()
        return [t for t, _ in got]

    def result(self, worker: str, *items: ResultItem) -> list:
        out = self.engine.result(worker, list(items), self.now)
        self.store.commit()
        return out

    def drain(self, worker: str = "w") -> list[bytes]:
        out = []
        while True:
            got = self.claim(worker, 1)
            if not got:
                return out
            out.append(got[0].id)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def make_node(tmp_path):
    nodes: list[Node] = []

    def make(shards: int = 1, **kw) -> Node:
        n = Node(str(tmp_path / f"data{len(nodes)}"), shards, **kw)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.close()


def raw_task(raw_id: bytes, status: int = PENDING, type_: str = "t", priority: int = 100,
             created: int = T0, scheduled: int | None = None, seq: int = 0) -> Task:
    return Task(raw_id, type_, priority, status, created, created if scheduled is None else scheduled,
                seq, 3, 300, 0)


# -- the store on its own ---------------------------------------------------------


def test_write_commit_close_reopen(tmp_path) -> None:
    path = str(tmp_path / "s")
    a, b, c, d = new_ids(4, 0, 1)
    s = Store(path)
    s.init_layout(0, 1)
    s.insert(raw_task(a, type_="alpha", priority=7), b"payload-a")
    s.insert(raw_task(b, type_="beta", priority=250, scheduled=T0 + 5000), b"")
    done = raw_task(c, status=COMPLETED, type_="alpha")
    done.result_len = 3
    s.insert(done, b"payload-c")
    s.put_result(c, b"res")
    s.insert(raw_task(d, status=CANCELLED, type_="gamma"), b"payload-d")
    big = new_ids(1, 0, 1)[0]
    big_payload = bytes(range(256)) * 40  # over INLINE_PAYLOAD_MAX: stored beside the record
    s.insert(raw_task(big, type_="big"), big_payload)
    assert s.commit() > 0
    s.close()

    s = Store(path)
    try:
        s.init_layout(0, 1)  # same identity: accepted
        ta = s.get(a)
        assert ta is not None and ta.type == "alpha" and ta.priority == 7 and ta.status == PENDING
        assert s.get(b).scheduled_ms == T0 + 5000
        assert s.get(c).status == COMPLETED and s.get(c).result_len == 3
        assert s.get_payload(a) == b"payload-a"
        assert s.get_payload(b) == b""
        assert s.get_result(c) == b"res"
        assert s.get_result(a) == b""
        assert [s.status_of(x) for x in (a, b, c, d)] == [PENDING, PENDING, COMPLETED, CANCELLED]
        v = s._views
        assert v["live"].get(a) is not None and v["live"].get(b) is not None
        assert v["done"].get(c) is not None and v["done"].get(d) is not None
        assert v["live"].get(c) is None and v["done"].get(a) is None
        assert v["idx"].get(b"talpha\x00" + a) == b""
        assert v["idx"].get(b"talpha\x00" + c) == b""
        assert v["idx"].get(b"tbeta\x00" + b) == b""
        assert sorted(s.family_names) == sorted(["live", "done", "payloads", "results", "idx",
                                                 "metadata"])
        # only finished ones in idx_finished
        assert sorted(s.scan_index("idx_finished", b"", None, 100)) == sorted(
            [U64.pack(T0) + c, U64.pack(T0) + d])
        assert s.counts == [3, 0, 1, 0, 0, 1]
        assert s.count_keys("payloads") == 1  # only the big one; small ones are inline
        assert s.get_payload(big) == big_payload
        assert s.get(big).inline_payload is None and s.get(a).inline_payload == b"payload-a"
        assert [k for k, t in s.scan_status(PENDING, None, 100) if t] == sorted([a, b, big])
        assert [k for k, t in s.scan_status(COMPLETED, None, 100) if t] == [c]
        assert [k for k, t in s.scan_status(CANCELLED, None, 100)] == sorted([c, d])
        assert list(s.scan_index("idx_type", b"alpha\x00", None, 100)) == sorted(
            [b"alpha\x00" + a, b"alpha\x00" + c])
    finally:
        s.close()


@pytest.mark.parametrize("sync, fsyncs", [("interval", [True, False, True, False]),
                                           ("always", [False, False, False, False])])
def test_sync_wal_fsyncs_only_what_was_written_since(tmp_path, sync, fsyncs) -> None:
    """An idle shard costs no fsync per interval; with sync=always every write was synced."""
    s = Store(str(tmp_path / "s"), StoreSettings(sync=sync))
    try:
        s.init_layout(0, 1)
        s.sync_wal()
        seen = []
        (a, b) = new_ids(2, 0, 1)
        s.insert(raw_task(a), b"x")
        s.commit()
        seen.append(s.sync_wal())
        seen.append(s.sync_wal())
        s.insert(raw_task(b), b"y")
        s.commit()
        seen.append(s.sync_wal())
        assert s.commit() == 0  # nothing staged: no write, so nothing to sync
        seen.append(s.sync_wal())
        assert seen == fsyncs
    finally:
        s.close()


def test_state_move_is_one_batch(tmp_path) -> None:
    s = Store(str(tmp_path / "s"))
    try:
        (a,) = new_ids(1, 0, 1)
        s.insert(raw_task(a, scheduled=T0 + 1000), b"x")
        s.commit()
        task = s.get(a)
        old_key = s.index_key(task)
        assert old_key is None
        task.status = COMPLETED
        task.updated_ms = T0 + 50
        s.update(task, PENDING, old_key)
        assert s.staged == 1
        # staged: visible through get/status_of, not yet in the database
        assert s.status_of(a) == COMPLETED and s.get(a).status == COMPLETED
        assert s._views["live"].get(a)[1] == PENDING
        assert s._views["done"].get(a) is None
        assert s.commit() == 1
        assert s.staged == 0
        v = s._views
        assert v["live"].get(a) is None and v["done"].get(a)[1] == COMPLETED
        assert v["idx"].get(b"f" + U64.pack(T0 + 50) + a) == b""
        assert s.counts == [0, 0, 1, 0, 0, 0]
        assert s.get(a).status == COMPLETED
    finally:
        s.close()


def test_counts_persisted_across_reopen(tmp_path) -> None:
    path = str(tmp_path / "s")
    s = Store(path)
    ids = new_ids(5, 0, 1)
    for i, raw in enumerate(ids):
        s.insert(raw_task(raw, status=[PENDING, PENDING, FAILED, DEAD_LETTER, COMPLETED][i]), b"")
    t = s.get(ids[0])
    key = s.index_key(t)
    t.status = IN_PROGRESS
    s.update(t, PENDING, key)
    s.commit()
    assert s.counts == [1, 1, 1, 1, 1, 0]
    s.close()
    s = Store(path)
    try:
        assert s.counts == [1, 1, 1, 1, 1, 0]
        s.delete(s.get(ids[4]))
        s.commit()
        assert s.get(ids[4]) is None and s.status_of(ids[4]) is None
    finally:
        s.close()
    s = Store(path)
    try:
        assert s.counts == [1, 1, 0, 1, 1, 0]
        assert s.get(ids[4]) is None
    finally:
        s.close()


def test_partitioned_routes_by_owner_and_persists(tmp_path) -> None:
    path = str(tmp_path / "p")
    ps = PartitionedStore(path, 2)
    ids = new_ids(3, 0, 2) + new_ids(3, 1, 2)
    for raw in ids:
        ps.insert(raw_task(raw), raw[:4])
    assert ps.staged == 6
    assert ps.commit() == 6
    assert ps.counts[PENDING] == 6
    assert [p.counts[PENDING] for p in ps.parts] == [3, 3]
    for raw in ids:
        assert ps.parts[owner_of(raw, 2)]._views["live"].get(raw) is not None
        assert ps.parts[1 - owner_of(raw, 2)]._views["live"].get(raw) is None
    merged = [t.id for _, t in ps.scan_status(PENDING, None, 100)]
    assert merged == sorted(ids)
    assert [k for k, _ in ps.scan_status(PENDING, None, 4)] == sorted(ids)[:4]
    ps.close()
    assert recorded_shards(path) == 2
    ps = PartitionedStore(path, 2)
    try:
        assert ps.counts[PENDING] == 6
        assert all(ps.get_payload(raw) == raw[:4] for raw in ids)
    finally:
        ps.close()


# -- layout / identity ----------------------------------------------------------


def test_init_layout_refuses_another_shard_identity(tmp_path) -> None:
    path = str(tmp_path / "s")
    s = Store(path)
    s.init_layout(0, 2)
    s.close()
    for shard, shards in ((1, 2), (0, 3), (0, 1)):
        s = Store(path)
        try:
            with pytest.raises(StoreError, match="holds shard 0 of 2"):
                s.init_layout(shard, shards)
        finally:
            s.close()
    s = Store(path)
    try:
        s.init_layout(0, 2)
        assert s.meta_get(b"shards") == b"2" and s.meta_get(b"shard") == b"0"
    finally:
        s.close()


def test_partitioned_store_refuses_swapped_shard_dirs(tmp_path) -> None:
    path = str(tmp_path / "p")
    PartitionedStore(path, 2).close()
    os.rename(os.path.join(path, "shard-0"), os.path.join(path, "tmp"))
    os.rename(os.path.join(path, "shard-1"), os.path.join(path, "shard-0"))
    os.rename(os.path.join(path, "tmp"), os.path.join(path, "shard-1"))
    with pytest.raises(StoreError):
        PartitionedStore(path, 2)
    # everything it opened was closed again: the dirs are not left locked
    os.rename(os.path.join(path, "shard-1"), os.path.join(path, "tmp"))
    os.rename(os.path.join(path, "shard-0"), os.path.join(path, "shard-1"))
    os.rename(os.path.join(path, "tmp"), os.path.join(path, "shard-0"))
    PartitionedStore(path, 2).close()


def test_init_layout_refuses_newer_schema(tmp_path) -> None:
    path = str(tmp_path / "s")
    s = Store(path)
    s.init_layout(0, 1)
    s.meta_put(b"schema_version", b"999")
    s.close()
    s = Store(path)
    try:
        with pytest.raises(StoreError, match="newer"):
            s.init_layout(0, 1)
    finally:
        s.close()


def test_resolve_shards(tmp_path) -> None:
    new = str(tmp_path / "new")
    cpus = len(os.sched_getaffinity(0))
    assert resolve_shards(new, "auto") == max(1, cpus)
    assert resolve_shards(new, 5) == 5
    assert resolve_shards(new, "3") == 3
    assert not os.path.exists(os.path.join(new, LAYOUT_FILE))  # resolving writes nothing

    existing = str(tmp_path / "existing")
    record_shards(existing, 3)
    record_shards(existing, 7)  # written once: the first count stays
    assert recorded_shards(existing) == 3
    assert resolve_shards(existing, "auto") == 3
    assert resolve_shards(existing, 3) == 3
    with pytest.raises(StoreError, match="created with 3 shards") as err:
        resolve_shards(existing, 4)
    assert "3" in str(err.value) and "4" in str(err.value)


def test_recorded_shards_bad_file(tmp_path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / LAYOUT_FILE).write_text('{"shards": 0}')
    with pytest.raises(StoreError):
        recorded_shards(str(d))
    (d / LAYOUT_FILE).write_text("not json")
    with pytest.raises(StoreError):
        resolve_shards(str(d), "auto")


def test_partitioned_store_opened_with_other_count_is_refused(tmp_path) -> None:
    path = str(tmp_path / "p")
    PartitionedStore(path, 2).close()
    with pytest.raises(StoreError):
        resolve_shards(path, 1)
    assert resolve_shards(path, "auto") == 2


# -- recovery -------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2])
def test_recover_restores_leases(make_node, shards: int) -> None:
    """A restart keeps every lease: same worker and attempt, a fresh expiry (now + lease)."""
    n = make_node(shards)
    ids = n.submit(*[TaskSpec("t", b"x") for _ in range(4)], home=shards - 1)
    got = n.claim("w", 2)
    assert [t.id for t in got] == ids[:2]
    (other,) = n.claim("gone", 1)
    rep = n.restart(advance=10)
    assert rep["leases_restored"] == 3
    assert rep["pending"] == 1
    for t in got:
        back = n.store.get(t.id)
        assert back.status == IN_PROGRESS and back.attempt == 1 and back.worker_id == "w"
    (q,) = n.engine.query([other.id])
    assert q.lease_expires_ms == n.now + n.settings.lease_ms
    stats = n.engine.stats()
    assert stats["pending"] == 1 and stats["in_progress"] == 3
    assert stats["by_tier"] == {"high": 0, "normal": 1, "low": 0}
    # the worker that outlived the restart heartbeats and completes as if nothing happened
    n.now += n.settings.lease_ms // 2
    n.engine.heartbeat("w", {}, [t.id for t in got], n.now)
    out = n.result("w", *[ResultItem(t.id, t.attempt, "completed") for t in got])
    assert [o["status"] for o in out] == ["completed", "completed"]
    # the one nobody renews is reclaimed at its expiry, counted like any reclaim
    n.now += n.settings.lease_ms
    n.engine.tick(n.now)
    n.store.commit()
    back = n.store.get(other.id)
    assert back.status == PENDING and back.retry_count == 1
    assert n.engine.counters["reclaimed_lease_expired"] == 1
    # and the attempt that lost its lease can never complete (fencing survives the restart)
    out = n.result("gone", ResultItem(other.id, other.attempt, "completed"))
    assert out[0]["error"]["code"] == "LeaseLost"
    assert sorted(n.drain()) == sorted([ids[3], other.id])
    assert n.store.get(other.id).attempt == 2


def test_recover_restores_a_lease_whose_timeout_passed_and_times_it_out(make_node) -> None:
    n = make_node()
    (tid,) = n.submit(TaskSpec("t", b"", timeout_seconds=5))
    n.claim("w", 1)
    n.restart(advance=6000)
    assert n.store.status_of(tid) == IN_PROGRESS
    n.engine.tick(n.now)
    n.store.commit()
    assert n.store.status_of(tid) == FAILED
    assert n.engine.counters["reclaimed_timeout"] == 1


@pytest.mark.parametrize("shards", [1, 2])
def test_recover_rebuilds_ready_order(make_node, shards: int) -> None:
    n = make_node(shards)
    rnd = random.Random(5)
    expected = []
    for i in range(30):
        prio = rnd.choice([10, 100, 200])
        (tid,) = n.submit(TaskSpec(rnd.choice(["a", "b"]), b"", priority=prio), home=i % shards)
        expected.append((-prio, i, tid))
        n.now += 1
    n.restart(advance=5)
    # FIFO is kept across the restart: tasks submitted now come after older ones
    for i, prio in enumerate((10, 100, 200)):
        (tid,) = n.submit(TaskSpec("a", b"", priority=prio), home=(i + 1) % shards)
        expected.append((-prio, 100 + i, tid))
    expected.sort()
    assert n.drain() == [tid for _, _, tid in expected]


def test_recover_types_filter_after_restart(make_node) -> None:
    n = make_node()
    a = n.submit(TaskSpec("a", b"", priority=1))[0]
    b = n.submit(TaskSpec("b", b"", priority=200))[0]
    n.restart()
    assert [t.id for t in n.claim("w", 10, ["a"])] == [a]
    assert [t.id for t in n.claim("w", 10)] == [b]


@pytest.mark.parametrize("shards", [1, 2])
def test_recover_dependency_waiters(make_node, shards: int) -> None:
    n = make_node(shards)
    parent = n.submit(TaskSpec("t", b"", priority=0), home=0)[0]
    child = n.submit(TaskSpec("t", b"", priority=255, depends_on=(parent,)), home=shards - 1)[0]
    grandchild = n.submit(TaskSpec("t", b"", depends_on=(child,)))[0]
    doomed_parent = n.submit(TaskSpec("t", b"", priority=0, max_retries=0))[0]
    doomed_child = n.submit(TaskSpec("t", b"", depends_on=(doomed_parent,)))[0]
    n.restart()
    stats = n.engine.stats()
    assert stats["pending"] == 5
    assert [t.id for t in n.claim("w", 10)] == [parent, doomed_parent]
    n.result("w", ResultItem(parent, 1, "completed"))
    n.result("w", ResultItem(doomed_parent, 1, "failed", error="x"))
    assert n.store.status_of(doomed_child) == DEAD_LETTER
    assert n.store.get(doomed_child).error.startswith("dependency failed: ")
    assert [t.id for t in n.claim("w", 10)] == [child]
    n.result("w", ResultItem(child, 1, "completed"))
    assert [t.id for t in n.claim("w", 10)] == [grandchild]


def test_recover_dead_dependency_cascades(make_node) -> None:
    """A dependent found pending whose dependency is already dead (e.g. a crash between
    the two commits) is dead-lettered at recovery, and so are its own dependents."""
    n = make_node()
    parent = n.submit(TaskSpec("t", b"", max_retries=0))[0]
    child = n.submit(TaskSpec("t", b"", depends_on=(parent,)))[0]
    grandchild = n.submit(TaskSpec("t", b"", depends_on=(child,)))[0]
    # Make the parent dead without the cascade, as if it died in another process.
    s = n.store.parts[0]
    t = s.get(parent)
    key = s.index_key(t)
    t.status = DEAD_LETTER
    s.update(t, PENDING, key)
    s.commit()
    n.restart()
    assert n.store.status_of(child) == DEAD_LETTER
    assert n.store.status_of(grandchild) == DEAD_LETTER
    stats = n.engine.stats()
    assert stats["pending"] == 0
    assert stats["by_tier"] == {"high": 0, "normal": 0, "low": 0}
    assert n.claim("w", 10) == []


def test_recover_keeps_scheduled_and_failed(make_node) -> None:
    n = make_node()
    delayed = n.submit(TaskSpec("t", b"", delay_ms=10_000))[0]
    retrying = n.submit(TaskSpec("t", b""))[0]
    (t,) = n.claim()
    n.result("w", ResultItem(retrying, t.attempt, "failed", error="e"))
    due = n.store.get(retrying).scheduled_ms
    assert n.store.status_of(retrying) == FAILED
    n.restart(advance=100)
    stats = n.engine.stats()
    assert stats["scheduled"] == 1 and stats["pending"] == 1 and stats["failed"] == 1
    assert n.claim() == []
    n.now = due
    n.engine.tick(n.now)
    n.store.commit()
    assert n.store.status_of(retrying) == PENDING
    assert [t.id for t in n.claim()] == [retrying]
    n.now = T0 + 10_000
    n.engine.tick(n.now)
    n.store.commit()
    assert n.engine.stats()["scheduled"] == 0
    assert [t.id for t in n.claim()] == [delayed]


def test_recover_corrects_counts(make_node) -> None:
    n = make_node()
    n.submit(*[TaskSpec("t", b"") for _ in range(4)])
    (t,) = n.claim()
    n.result("w", ResultItem(t.id, t.attempt, "failed", error="e"))
    assert n.store.counts[PENDING] == 3 and n.store.counts[FAILED] == 1
    p = n.store.parts[0]
    p.counts[PENDING] = 999
    p.counts[FAILED] = 0
    p.staged += 1  # persist the wrong counts
    p.commit()
    n.store.close()
    n.store = PartitionedStore(n.path, 1)
    assert n.store.counts[PENDING] == 999
    n.engine = Engine(n.store, n.settings, rng=random.Random(3))
    rep = n.engine.recover(n.now)
    assert rep["counts_corrected"] == 2
    assert n.store.counts[PENDING] == 3 and n.store.counts[FAILED] == 1
    assert n.engine.depth() == 4
    # and the correction is durable
    rep = n.restart()
    assert rep["counts_corrected"] == 0
    assert n.store.counts[PENDING] == 3


def test_recover_stats_by_tier_not_double_counted(make_node) -> None:
    n = make_node()
    n.submit(TaskSpec("t", b"", priority=250), TaskSpec("t", b"", priority=50),
             TaskSpec("t", b"", priority=150))
    n.claim("w", 2)  # the 250 and the 150 are in progress, and stay so (leases survive)
    n.restart()
    stats = n.engine.stats()
    assert stats["pending"] == 1 and stats["in_progress"] == 2
    assert stats["by_tier"] == {"high": 0, "normal": 0, "low": 1}
    n.claim("w", 3)
    assert n.engine.stats()["by_tier"] == {"high": 0, "normal": 0, "low": 0}


def test_recover_seq_continues(make_node) -> None:
    n = make_node()
    ids = n.submit(*[TaskSpec("t", b"") for _ in range(3)])
    n.restart()
    (late,) = n.submit(TaskSpec("t", b""))
    assert n.store.get(late).seq > max(n.store.get(i).seq for i in ids)


# -- retention ------------------------------------------------------------------


def test_retention_slice(make_node) -> None:
    n = make_node(retention_ms=1000)
    done_old, cancel_old, dead_old, pend_old, done_new = n.submit(
        *[TaskSpec("t", b"payload") for _ in range(5)])
    got = {t.id: t for t in n.claim("w", 3)}  # done_old, cancel_old, dead_old
    n.result("w", ResultItem(done_old, got[done_old].attempt, "completed", b"res"))
    n.result("w", ResultItem(dead_old, got[dead_old].attempt, "failed", error="x", retry=False))
    n.result("w", ResultItem(cancel_old, got[cancel_old].attempt, "released"))
    n.engine.cancel(cancel_old, n.now)
    n.store.commit()
    n.now += 500
    t1, t2 = n.claim("w", 2)
    assert (t1.id, t2.id) == (pend_old, done_new)
    n.result("w", ResultItem(pend_old, t1.attempt, "released"))
    n.result("w", ResultItem(done_new, t2.attempt, "completed"))
    # at +1000 the old ones are exactly at the retention: kept
    n.now = T0 + 1000
    assert n.engine.retention_slice(n.now) == 0
    n.now = T0 + 1001
    assert n.engine.retention_slice(n.now) == 2
    n.store.commit()
    assert n.store.get(done_old) is None and n.store.get(cancel_old) is None
    assert n.store.get_result(done_old) == b"" and n.store.get_payload(done_old) == b""
    assert n.store.status_of(dead_old) == DEAD_LETTER
    assert n.store.status_of(pend_old) == PENDING
    assert n.store.status_of(done_new) == COMPLETED
    assert n.store.counts[COMPLETED] == 1 and n.store.counts[CANCELLED] == 0
    p = n.store.parts[0]
    assert p.count_keys("live") == 2 and p.count_keys("done") == 1
    # a type entry each, a finished entry for done_new, a dead-letter time entry for dead_old
    assert p.count_keys("idx") == 3 + 1 + 1
    # small payloads live inside the record (task.INLINE_PAYLOAD_MAX): none stored beside it
    assert p.count_keys("payloads") == 0 and p.count_keys("results") == 0
    n.now = T0 + 10_000
    assert n.engine.retention_slice(n.now) == 1
    assert n.engine.retention_slice(n.now) == 0  # staged delete not counted twice
    n.store.commit()
    assert n.store.get(done_new) is None
    assert n.engine.retention_slice(n.now) == 0
    rep = n.restart()
    assert n.store.counts[COMPLETED] == 0
    assert rep["pending"] == 1


def test_retention_slice_is_bounded(make_node) -> None:
    n = make_node(retention_ms=1000)
    ids = n.submit(*[TaskSpec("t", b"") for _ in range(7)])
    for raw in ids:
        n.engine.cancel(raw, n.now)
    n.store.commit()
    n.now += 5000
    assert n.engine.retention_slice(n.now, max_keys=3) == 3
    n.store.commit()
    assert n.engine.retention_slice(n.now, max_keys=3) == 3
    n.store.commit()
    assert n.engine.retention_slice(n.now, max_keys=3) == 1
    n.store.commit()
    assert n.store.counts[CANCELLED] == 0
