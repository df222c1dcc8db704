"""The engine with a fake clock: the transition table and every queue behaviour.

Every test that takes ``env`` or ``make_env`` runs twice: on the in-memory store
(store/memory.py) and on RocksDB (store/partitioned.py); ``-k memory`` runs the fast half.
"""

from __future__ import annotations

import random

import pytest

from shardq.engine import states
from shardq.engine.engine import Engine, EngineSettings, ResultItem, TaskSpec
from shardq.errors import BadRequest, InvalidState, NotFound, QueueFull
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD
from shardq.specs import TaskOptions
from shardq.store.memory import MemoryDisk, MemoryStore
from shardq.store.partitioned import PartitionedStore
from shardq.task import (
    CANCELLED,
    COMPLETED,
    DEAD_LETTER,
    FAILED,
    IN_PROGRESS,
    PENDING,
    STATUS_NAMES,
    id_to_str,
    new_ids,
    owner_of,
)

T0 = 1_700_000_000_000
LEASE = 1000
HB = 500


class Env:
    """An engine on a store of ``kind`` (memory | rocksdb), with a fake clock."""

    def __init__(self, kind: str, path, shards: int = 1, seed: int = 1, **settings) -> None:
        self.kind = kind
        self.path = path
        self.shards = shards
        self.now = T0
        self.disk = MemoryDisk()  # the memory store's "data dir"
        self.store = self._open()
        kw = dict(shards=shards, lease_ms=LEASE, heartbeat_ms=HB, max_frame=MAX_FRAME,
                  max_payload=MAX_PAYLOAD)
        kw.update(settings)
        self.settings = EngineSettings(**kw)
        self.engine = Engine(self.store, self.settings, rng=random.Random(seed))

    def _open(self):
        if self.kind == "memory":
            return MemoryStore(self.shards, disk=self.disk)
        return PartitionedStore(str(self.path), self.shards)

    def restart(self) -> dict:
        """Close and reopen the store (what was committed survives), a new engine recovers."""
        self.store.close()
        self.store = self._open()
        self.engine = Engine(self.store, self.settings, rng=random.Random(2))
        return self.engine.recover(self.now)

    def count_keys(self, family: str) -> int:
        """Committed keys of one column family (store/layout.py), over every part."""
        if self.kind == "memory":
            return self.store.count_keys(family)
        return sum(p.count_keys(family) for p in self.store.parts)

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now

    def tick(self, ms: int = 0):
        self.now += ms
        nxt = self.engine.tick(self.now)
        self.store.commit()
        return nxt

    def submit(self, *specs: TaskSpec, home: int | None = None) -> list[bytes]:
        ids = self.engine.submit(list(specs), self.now, home=home)
        self.store.commit()
        return ids

    def add(self, type: str = "t", priority: int | None = None, **kw) -> bytes:
        return self.submit(TaskSpec(type, kw.pop("payload", b"p"), priority=priority, **kw))[0]

    def claim(self, worker: str = "w1", max_tasks: int = 1, types=None):
        got = self.engine.claim(worker, max_tasks, types, self.now)
        self.store.commit()
        return got

    def claim_one(self, worker: str = "w1", types=None):
        got = self.claim(worker, 1, types)
        assert len(got) == 1
        return got[0][0]

    def result(self, worker: str, *items: ResultItem):
        out = self.engine.result(worker, list(items), self.now)
        self.store.commit()
        return out

    def complete(self, task, worker: str = "w1", result: bytes = b""):
        return self.result(worker, ResultItem(task.id, task.attempt, "completed", result))

    def fail(self, task, worker: str = "w1", error: str = "boom", retry: bool = True):
        return self.result(worker, ResultItem(task.id, task.attempt, "failed", error=error, retry=retry))

    def get(self, raw: bytes):
        return self.store.get(raw)

    def status(self, raw: bytes) -> int:
        return self.store.status_of(raw)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def make_env(tmp_path, store_kind: str):
    envs: list[Env] = []

    def make(shards: int = 1, **kw) -> Env:
        env = Env(store_kind, tmp_path / f"d{len(envs)}", shards, **kw)
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture
def env(make_env) -> Env:
    return make_env()


# -- the transition table ------------------------------------------------------------
#
# For every (event, source) pair: a function that drives a fresh task to ``source``
# and then applies ``event`` through the engine's public API; it returns the id of
# the task whose status must now be the event's target.


def _to_pending(env: Env) -> bytes:
    tid = env.add(max_retries=3)
    assert env.status(tid) == PENDING
    return tid


def _to_in_progress(env: Env, **kw):
    tid = env.add(**kw)
    task = env.claim_one()
    assert task.id == tid and env.status(tid) == IN_PROGRESS
    return task


def _to_failed(env: Env):
    task = _to_in_progress(env)
    env.fail(task)
    assert env.status(task.id) == FAILED
    return task.id


def _to_dead_letter(env: Env):
    task = _to_in_progress(env)
    env.fail(task, retry=False)
    assert env.status(task.id) == DEAD_LETTER
    return task.id


def ev_submit(env: Env, source: int) -> bytes:
    assert source == states.NEW
    return env.add()


def ev_submit_dependency_failed(env: Env, source: int) -> bytes:
    dead = _to_dead_letter(env)
    return env.add(depends_on=(dead,))


def ev_claim(env: Env, source: int) -> bytes:
    tid = _to_pending(env)
    env.claim_one()
    return tid


def ev_complete(env: Env, source: int) -> bytes:
    task = _to_in_progress(env)
    assert env.complete(task)[0]["status"] == "completed"
    return task.id


def ev_fail_retry(env: Env, source: int) -> bytes:
    task = _to_in_progress(env)
    assert env.fail(task)[0]["status"] == "failed"
    return task.id


def ev_fail_final(env: Env, source: int) -> bytes:
    task = _to_in_progress(env, max_retries=0)
    assert env.fail(task)[0]["status"] == "dead_letter"
    return task.id


def ev_release(env: Env, source: int) -> bytes:
    task = _to_in_progress(env)
    env.result("w1", ResultItem(task.id, task.attempt, "released"))
    return task.id


def ev_reclaim_retry(env: Env, source: int) -> bytes:
    task = _to_in_progress(env)
    env.tick(LEASE)
    assert env.get(task.id).error == "lease expired"
    return task.id


def ev_reclaim_final(env: Env, source: int) -> bytes:
    task = _to_in_progress(env, max_retries=0)
    env.tick(LEASE)
    return task.id


def ev_retry_due(env: Env, source: int) -> bytes:
    tid = _to_failed(env)
    env.tick(env.get(tid).scheduled_ms - env.now)
    return tid


def ev_cancel(env: Env, source: int) -> bytes:
    tid = _to_pending(env) if source == PENDING else _to_failed(env)
    assert env.engine.cancel(tid, env.now).status == CANCELLED
    env.store.commit()
    return tid


def ev_cancel_running(env: Env, source: int) -> bytes:
    tid = env.add()
    env.claim_one("w")
    assert env.engine.cancel(tid, env.now) is not None
    env.store.commit()
    return tid


def ev_dependency_failed(env: Env, source: int) -> bytes:
    parent = env.add()
    child = env.add(depends_on=(parent,))
    assert env.status(child) == PENDING
    env.engine.cancel(parent, env.now)
    env.store.commit()
    return child


def ev_requeue(env: Env, source: int) -> bytes:
    tid = _to_dead_letter(env) if source == DEAD_LETTER else _to_failed(env)
    env.engine.requeue(tid, env.now)
    env.store.commit()
    return tid


def ev_recover(env: Env, source: int) -> bytes:
    task = _to_in_progress(env)
    env.restart()
    return task.id


def ev_expire(env: Env, source: int) -> bytes:
    opts = TaskOptions(expires_at_ms=env.now + 100_000)
    tid = env.add(options=opts, max_retries=3)
    if source == FAILED:
        env.fail(env.claim_one())
        assert env.status(tid) == FAILED
    env.now += 100_000
    env.engine.tick(env.now)
    assert env.get(tid).error == "expired"
    return tid


DRIVERS = {
    "submit": ev_submit, "submit_dependency_failed": ev_submit_dependency_failed,
    "claim": ev_claim, "complete": ev_complete, "fail_retry": ev_fail_retry,
    "fail_final": ev_fail_final, "release": ev_release, "reclaim_retry": ev_reclaim_retry,
    "reclaim_final": ev_reclaim_final, "retry_due": ev_retry_due, "cancel": ev_cancel,
    "cancel_running": ev_cancel_running,
    "dependency_failed": ev_dependency_failed, "requeue": ev_requeue, "recover": ev_recover,
    "expire": ev_expire,
}

ROWS = [(t.event, src, t.target) for t in states.TRANSITIONS for src in sorted(t.sources)]


def test_every_event_of_the_table_has_a_driver() -> None:
    assert {t.event for t in states.TRANSITIONS} == set(DRIVERS)
    assert len({t.event for t in states.TRANSITIONS}) == len(states.TRANSITIONS)


@pytest.mark.parametrize("event,source,target", ROWS,
                         ids=[f"{e}-from-{'new' if s == states.NEW else STATUS_NAMES[s]}"
                              for e, s, _ in ROWS])
def test_transition(env: Env, event: str, source: int, target: int) -> None:
    assert states.check(event, source) == target
    tid = DRIVERS[event](env, source)
    task = env.get(tid)
    assert task.status == target, f"{event}: expected {STATUS_NAMES[target]}, got {STATUS_NAMES[task.status]}"
    # The store agrees after a commit: the record lives in the target's status family.
    env.store.commit()
    assert env.store.get_in(target, tid) is not None


@pytest.mark.parametrize("transition", states.TRANSITIONS, ids=[t.event for t in states.TRANSITIONS])
def test_check_refuses_every_other_source(transition: states.Transition) -> None:
    others = [s for s in (states.NEW, *range(6)) if s not in transition.sources]
    assert others
    for status in others:
        with pytest.raises(InvalidState):
            states.check(transition.event, status)


def test_diagram_lists_every_row() -> None:
    text = states.diagram()
    for t in states.TRANSITIONS:
        assert f"| {t.event} |" in text


# -- ready order -------------------------------------------------------------------


def test_ready_order_priority_then_fifo_across_batches(env: Env) -> None:
    expected: list[tuple[int, int, bytes]] = []  # (-priority, submission order, id)
    order = 0
    rnd = random.Random(7)
    for _batch in range(5):
        specs = [TaskSpec("t", b"x", priority=rnd.choice([0, 50, 100, 150, 200, 255]))
                 for _ in range(8)]
        ids = env.submit(*specs)
        for spec, tid in zip(specs, ids):
            expected.append((-spec.priority, order, tid))
            order += 1
        env.advance(1)
    expected.sort()
    got = []
    while True:
        batch = env.claim("w1", 3)
        if not batch:
            break
        got.extend(t.id for t, _ in batch)
    assert got == [tid for _, _, tid in expected]


def test_ready_order_default_priority_is_100(env: Env) -> None:
    a = env.add()
    b = env.add(priority=101)
    c = env.add(priority=99)
    assert env.get(a).priority == 100
    assert [t.id for t, _ in env.claim("w", 3)] == [b, a, c]


def test_claim_types_filter_does_not_pop_other_types(env: Env) -> None:
    a1 = env.add("a", priority=10)
    b1 = env.add("b", priority=250)
    c1 = env.add("c", priority=200)
    a2 = env.add("a", priority=20)
    got = env.claim("w", 10, types=["a"])
    assert [t.id for t, _ in got] == [a2, a1]
    assert all(t.type == "a" for t, _ in got)
    assert env.status(b1) == PENDING and env.status(c1) == PENDING
    assert env.claim("w", 10, types=["zzz"]) == []
    # The other types are still claimable, in order.
    assert [t.id for t, _ in env.claim("w", 10)] == [b1, c1]


def test_claim_types_filter_several_types(env: Env) -> None:
    a = env.add("a", priority=1)
    b = env.add("b", priority=2)
    c = env.add("c", priority=3)
    got = env.claim("w", 10, types=["a", "b"])
    assert [t.id for t, _ in got] == [b, a]
    assert env.status(c) == PENDING


def test_claim_respects_max_and_returns_payloads(env: Env) -> None:
    ids = env.submit(*[TaskSpec("t", f"payload-{i}".encode()) for i in range(5)])
    got = env.claim("w", 2)
    assert len(got) == 2
    assert [(t.id, p) for t, p in got] == [(ids[0], b"payload-0"), (ids[1], b"payload-1")]
    got = env.claim("w", 10)
    assert [t.id for t, _ in got] == ids[2:]
    assert env.claim("w", 10) == []


def test_empty_payload_claimed_as_empty_bytes(env: Env) -> None:
    env.add(payload=b"")
    (task, payload), = env.claim("w")
    assert payload == b"" and task.payload_len == 0


# -- delays --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["delay_ms", "scheduled_ms"])
def test_delayed_task_not_claimable_before_due(env: Env, how: str) -> None:
    due = env.now + 5000
    kw = {"delay_ms": 5000} if how == "delay_ms" else {"scheduled_ms": due}
    tid = env.add(**kw)
    assert env.get(tid).scheduled_ms == due
    assert env.engine.stats()["scheduled"] == 1
    assert env.claim() == []
    nxt = env.tick(4999 - 0)
    assert nxt is not None and nxt <= due
    assert env.claim() == []
    env.tick(1)  # now == due
    assert env.engine.stats()["scheduled"] == 0
    assert env.claim_one().id == tid


def test_scheduled_in_the_past_is_ready_now(env: Env) -> None:
    tid = env.add(scheduled_ms=env.now - 10_000)
    assert env.engine.stats()["scheduled"] == 0
    assert env.claim_one().id == tid


def test_tick_returns_next_due_time(env: Env) -> None:
    assert env.engine.tick(env.now) is None
    env.add(delay_ms=3000)
    assert env.engine.tick(env.now) == env.now + 3000


# -- leases ----------------------------------------------------------------------------


def test_claim_sets_lease_fields(env: Env) -> None:
    tid = env.add()
    task = env.claim_one("worker-7")
    assert task.id == tid
    stored = env.get(tid)
    assert stored.status == IN_PROGRESS
    assert stored.attempt == 1
    assert stored.worker_id == "worker-7"
    assert stored.lease_expires_ms == env.now + LEASE
    assert stored.started_ms == env.now
    wire = stored.to_wire(0)
    assert wire["worker_id"] == "worker-7" and wire["lease_expires_ms"] == env.now + LEASE


def test_heartbeat_extends_lease(env: Env) -> None:
    tid = env.add()
    env.claim_one("w")
    for _ in range(6):
        env.tick(HB - 100)
        expires, lost = env.engine.heartbeat("w", {}, [tid], env.now)
        assert expires == env.now + LEASE
        assert lost == []
        assert env.engine.query([tid])[0].lease_expires_ms == expires
    assert env.status(tid) == IN_PROGRESS  # 2400 ms > LEASE, kept alive by heartbeats
    env.tick(LEASE)  # heartbeats stop
    task = env.get(tid)
    assert task.status == PENDING and task.error == "lease expired"


def test_heartbeat_with_active_extends_only_the_listed_leases(env: Env) -> None:
    """A lease whose CLAIM answer never reached the worker is not in its `active`: the worker's
    heartbeats do not keep it alive, so it expires and the task runs elsewhere."""
    held, stranded = env.submit(TaskSpec("t", b""), TaskSpec("t", b""))
    assert len(env.engine.claim("w", 2, ["t"], env.now)) == 2
    granted = env.now
    for _ in range(6):
        env.tick(HB - 100)
        expires, lost = env.engine.heartbeat("w", {}, [held], env.now)
        assert lost == []
        assert env.engine.query([held])[0].lease_expires_ms == expires
        if env.status(stranded) == IN_PROGRESS:
            assert env.engine.query([stranded])[0].lease_expires_ms == granted + LEASE
    assert env.status(held) == IN_PROGRESS
    task = env.get(stranded)
    assert task.status == PENDING and task.error == "lease expired"
    # Without `active` (the contract's plain form) every lease the worker holds is extended.
    env.engine.heartbeat("w", {}, None, env.now)
    assert env.engine.query([held])[0].lease_expires_ms == env.now + LEASE


def test_heartbeat_reports_lost_ids(env: Env) -> None:
    a, b = env.submit(TaskSpec("t", b""), TaskSpec("t", b""))
    env.claim_one("w")
    _, lost = env.engine.heartbeat("w", {"cpu_percent": 1.5, "state": "draining"}, [a, b], env.now)
    assert lost == [id_to_str(b)]
    w = {w.worker_id: w for w in env.engine.workers()}["w"]
    assert w.cpu_percent == 1.5 and w.state == "draining"


def test_lease_expiry_reclaims_and_counts(env: Env) -> None:
    tid = env.add(max_retries=2)
    env.claim_one("w")
    env.tick(LEASE - 1)
    assert env.status(tid) == IN_PROGRESS
    env.tick(1)
    task = env.get(tid)
    assert task.status == PENDING
    assert task.retry_count == 1
    assert task.error == "lease expired"
    assert task.worker_id is None
    assert task.scheduled_ms <= env.now  # at once, no backoff
    again = env.claim_one("w2")
    assert again.id == tid and again.attempt == 2
    env.tick(LEASE)
    assert env.get(tid).retry_count == 2 and env.status(tid) == PENDING
    env.claim_one("w3")
    env.tick(LEASE)
    task = env.get(tid)
    assert task.status == DEAD_LETTER
    assert task.retry_count == 2
    assert task.error == "lease expired"
    assert env.claim() == []


def test_result_after_lease_expiry_is_lease_lost(env: Env) -> None:
    tid = env.add()
    task = env.claim_one("w")
    env.tick(LEASE)
    (out,) = env.complete(task, "w")
    assert out["error"]["code"] == "LeaseLost"
    assert env.status(tid) == PENDING


def test_dead_worker_leases_reclaimed_as_worker_lost(make_env) -> None:
    env = make_env(lease_ms=60_000, heartbeat_ms=HB)
    a, b = env.submit(TaskSpec("t", b""), TaskSpec("t", b"", max_retries=0))
    env.claim("w", 2)
    env.claim("alive", 0)
    for _ in range(3):
        env.tick(HB - 200)
        env.engine.heartbeat("alive", {}, None, env.now)
    assert env.status(a) == IN_PROGRESS
    env.now = T0 + 2 * HB - 1
    env.tick()
    assert env.status(a) == IN_PROGRESS
    env.tick(1)  # 2 x heartbeat without a message from "w"
    ta, tb = env.get(a), env.get(b)
    assert ta.status == PENDING and ta.error == "worker lost" and ta.retry_count == 1
    assert tb.status == DEAD_LETTER and tb.error == "worker lost"
    assert "w" not in {w.worker_id for w in env.engine.workers()}
    assert "alive" in {w.worker_id for w in env.engine.workers()}


def test_worker_kept_alive_by_heartbeats(make_env) -> None:
    env = make_env(lease_ms=60_000, heartbeat_ms=HB)
    tid = env.add()
    env.claim_one("w")
    for _ in range(10):
        env.tick(HB)
        env.engine.heartbeat("w", {}, None, env.now)
    assert env.status(tid) == IN_PROGRESS


def test_timeout_enforced_even_with_heartbeats(env: Env) -> None:
    tid = env.add(timeout_seconds=2, max_retries=3)
    env.claim_one("w")
    start = env.now
    for _ in range(4):  # up to start + 1600: the lease alone would have expired at +1000
        env.tick(HB - 100)
        env.engine.heartbeat("w", {}, [tid], env.now)
    assert env.status(tid) == IN_PROGRESS
    env.now = start + 2000
    env.tick()
    task = env.get(tid)
    assert task.status == FAILED
    assert task.error == "timeout"
    assert task.retry_count == 1
    assert 800 <= task.scheduled_ms - env.now <= 1200  # backoff base 1 s +- 20 %
    env.tick(task.scheduled_ms - env.now)
    assert env.status(tid) == PENDING


def test_timeout_without_retries_dead_letters(env: Env) -> None:
    tid = env.add(timeout_seconds=1, max_retries=0)
    env.claim_one("w")
    env.tick(LEASE)  # lease and timeout fall due together: one failure only
    task = env.get(tid)
    assert task.status == DEAD_LETTER


# -- RESULT -----------------------------------------------------------------------


def test_completed_stores_result(env: Env) -> None:
    tid = env.add()
    task = env.claim_one("w")
    (out,) = env.complete(task, "w", b"the result")
    assert out == {"id": id_to_str(tid), "status": "completed"}
    stored = env.get(tid)
    assert stored.status == COMPLETED and stored.result_len == 10
    assert env.store.get_result(tid) == b"the result"
    assert env.engine.stats()["completed"] == 1


def test_completed_with_empty_result(env: Env) -> None:
    tid = env.add()
    env.complete(env.claim_one("w"), "w", b"")
    assert env.get(tid).result_len == 0
    assert env.store.get_result(tid) == b""


def test_failed_retries_with_backoff(env: Env) -> None:
    tid = env.add(max_retries=5)
    for retry in range(5):
        task = env.claim_one("w")
        (out,) = env.fail(task, "w", error=f"e{retry}")
        assert out["status"] == "failed"
        stored = env.get(tid)
        assert stored.retry_count == retry + 1
        assert stored.error == f"e{retry}"
        base = 1000 * 2 ** retry
        delay = stored.scheduled_ms - env.now
        assert 0.8 * base <= delay <= 1.2 * base
        assert env.claim() == []  # not before its time
        env.tick(delay - 1)
        assert env.status(tid) == FAILED
        env.tick(1)
        assert env.status(tid) == PENDING
    task = env.claim_one("w")
    (out,) = env.fail(task, "w", error="last")
    assert out["status"] == "dead_letter"
    assert env.get(tid).error == "last" and env.get(tid).retry_count == 5


@pytest.mark.parametrize("retry_count", [0, 1, 3, 10, 12, 30, 62, 200])
def test_backoff_bounds_over_many_seeds(tmp_path, retry_count: int) -> None:
    settings = EngineSettings(backoff_base_ms=1000, backoff_max_ms=3_600_000, jitter=0.2,
                              max_frame=MAX_FRAME, max_payload=MAX_PAYLOAD)
    base = min(1000 * 2 ** retry_count, 3_600_000)
    seen = set()
    for seed in range(300):
        e = Engine(None, settings, rng=random.Random(seed))  # backoff needs no store
        b = e.backoff_ms(retry_count)
        assert 0.8 * base <= b <= 1.2 * base, (seed, b)
        seen.add(b)
    assert len(seen) > 50  # it is jittered


def test_backoff_capped_at_max(make_env) -> None:
    env = make_env(backoff_base_ms=1000, backoff_max_ms=5000)
    tid = env.add(max_retries=10)
    for _ in range(6):
        task = env.claim_one("w")
        env.fail(task, "w")
        delay = env.get(tid).scheduled_ms - env.now
        assert delay <= 6000
        env.tick(delay)
    assert 4000 <= delay <= 6000


def test_failed_with_retry_false_dead_letters(env: Env) -> None:
    tid = env.add(max_retries=3)
    (out,) = env.fail(env.claim_one("w"), "w", error="fatal", retry=False)
    assert out["status"] == "dead_letter"
    task = env.get(tid)
    assert task.status == DEAD_LETTER and task.error == "fatal" and task.retry_count == 0


def test_released_goes_back_uncounted(env: Env) -> None:
    tid = env.add()
    task = env.claim_one("w")
    (out,) = env.result("w", ResultItem(tid, task.attempt, "released"))
    assert out["status"] == "pending"
    stored = env.get(tid)
    assert stored.status == PENDING and stored.retry_count == 0 and stored.worker_id is None
    again = env.claim_one("w2")
    assert again.id == tid and again.attempt == 2


def _snapshot(env: Env, tid: bytes):
    t = env.get(tid)
    return (t.status, t.attempt, t.retry_count, t.worker_id, t.result_len, t.error, t.updated_ms)


def test_stale_attempt_other_worker_not_in_progress_are_lease_lost(env: Env) -> None:
    tid = env.add()
    t1 = env.claim_one("w")
    env.result("w", ResultItem(tid, 1, "released"))
    t2 = env.claim_one("w")
    assert t2.attempt == 2
    before = _snapshot(env, tid)
    env.advance(5)
    # a stale attempt
    (out,) = env.result("w", ResultItem(tid, t1.attempt, "completed", b"r"))
    assert out["error"]["code"] == "LeaseLost"
    # another worker with the right attempt
    (out,) = env.result("other", ResultItem(tid, t2.attempt, "completed", b"r"))
    assert out["error"]["code"] == "LeaseLost"
    (out,) = env.result("other", ResultItem(tid, t2.attempt, "failed", error="x"))
    assert out["error"]["code"] == "LeaseLost"
    assert _snapshot(env, tid) == before
    # the holder completes; a second completion is LeaseLost (completed at most once)
    (out,) = env.complete(t2, "w", b"one")
    assert out["status"] == "completed"
    after = _snapshot(env, tid)
    (out,) = env.complete(t2, "w", b"two")
    assert out["error"]["code"] == "LeaseLost"
    assert _snapshot(env, tid) == after
    assert env.store.get_result(tid) == b"one"
    # a pending task (never claimed)
    p = env.add()
    (out,) = env.result("w", ResultItem(p, 0, "completed"))
    assert out["error"]["code"] == "LeaseLost"
    assert env.status(p) == PENDING


def test_result_unknown_id_is_not_found(env: Env) -> None:
    ghost = new_ids(1, 0, 1)[0]
    tid = env.add()
    task = env.claim_one("w")
    out = env.result("w", ResultItem(ghost, 1, "completed"), ResultItem(tid, task.attempt, "completed"))
    assert out[0] == {"id": id_to_str(ghost), "error": out[0]["error"]}
    assert out[0]["error"]["code"] == "NotFound"
    assert out[1]["status"] == "completed"
    assert env.status(ghost) is None


def test_result_too_large(make_env) -> None:
    env = make_env(max_payload=10)
    tid = env.add()
    task = env.claim_one("w")
    (out,) = env.complete(task, "w", b"x" * 11)
    assert out["error"]["code"] == "TooLarge"
    assert env.status(tid) == IN_PROGRESS
    assert env.store.get_result(tid) == b""
    (out,) = env.complete(task, "w", b"x" * 10)  # exactly the limit is fine
    assert out["status"] == "completed"
    assert env.store.get_result(tid) == b"x" * 10


# -- dependencies -------------------------------------------------------------------


def test_child_waits_for_parent_completed(env: Env) -> None:
    parent = env.add(priority=1)
    child = env.add(priority=255, depends_on=(parent,))
    got = env.claim("w", 10)
    assert [t.id for t, _ in got] == [parent]
    assert env.claim("w", 10) == []
    env.fail(got[0][0], "w")  # failed (retrying) is not completed
    env.tick(env.get(parent).scheduled_ms - env.now)
    assert [t.id for t, _ in env.claim("w", 10)] == [parent]
    env.complete(env.get(parent), "w")
    assert env.claim_one("w").id == child


def test_child_with_two_parents(env: Env) -> None:
    p1, p2 = env.add(), env.add()
    child = env.add(depends_on=(p1, p2))
    t1, t2 = [t for t, _ in env.claim("w", 2)]
    env.complete(t1, "w")
    assert env.claim("w") == []
    env.complete(t2, "w")
    assert env.claim_one("w").id == child


def test_depend_on_completed_parent_is_ready_at_once(env: Env) -> None:
    parent = env.add()
    env.complete(env.claim_one("w"), "w")
    child = env.add(depends_on=(parent,))
    assert env.claim_one("w").id == child


@pytest.mark.parametrize("how", ["dead_letter", "cancelled"])
def test_parent_failure_cascades(env: Env, how: str) -> None:
    parent = env.add(max_retries=0)
    child = env.add(depends_on=(parent,))
    grandchild = env.add(depends_on=(child,))
    other = env.add(depends_on=(env.add(),))
    if how == "dead_letter":
        env.fail(env.claim_one("w"), "w")
    else:
        env.engine.cancel(parent, env.now)
        env.store.commit()
    assert env.status(parent) == (DEAD_LETTER if how == "dead_letter" else CANCELLED)
    c, g = env.get(child), env.get(grandchild)
    assert c.status == DEAD_LETTER and c.error == f"dependency failed: {id_to_str(parent)}"
    assert g.status == DEAD_LETTER and g.error == f"dependency failed: {id_to_str(child)}"
    assert env.status(other) == PENDING
    assert env.engine.stats()["dead_letter"] == (3 if how == "dead_letter" else 2)


def test_parent_lease_expiry_final_cascades(env: Env) -> None:
    parent = env.add(max_retries=0)
    child = env.add(depends_on=(parent,))
    env.claim_one("w")
    env.tick(LEASE)
    assert env.status(parent) == DEAD_LETTER
    assert env.get(child).error == f"dependency failed: {id_to_str(parent)}"


@pytest.mark.parametrize("how", ["dead_letter", "cancelled"])
def test_submit_depending_on_failed_parent_is_dead_at_once(env: Env, how: str) -> None:
    parent = env.add()
    if how == "dead_letter":
        env.fail(env.claim_one("w"), "w", retry=False)
    else:
        env.engine.cancel(parent, env.now)
    cid = new_ids(1, 0, 1)[0]
    child, grandchild = env.submit(TaskSpec("t", b"", id=cid, depends_on=(parent,)),
                                   TaskSpec("t", b"", depends_on=(cid,)))
    assert child == cid
    assert env.get(child).status == DEAD_LETTER
    assert env.get(child).error == f"dependency failed: {id_to_str(parent)}"
    assert env.get(grandchild).status == DEAD_LETTER
    assert env.get(grandchild).error == f"dependency failed: {id_to_str(cid)}"
    assert env.claim() == []
    stats = env.engine.stats()
    assert stats["pending"] == 0
    assert sum(stats["by_tier"].values()) == 0


@pytest.mark.parametrize("parent_first", [True, False])
def test_dependency_inside_batch_by_client_id(env: Env, parent_first: bool) -> None:
    pid = new_ids(1, 0, 1)[0]
    parent = TaskSpec("t", b"P", id=pid, priority=1)
    child = TaskSpec("t", b"C", depends_on=(pid,), priority=255)
    specs = [parent, child] if parent_first else [child, parent]
    ids = env.submit(*specs)
    assert ids[0 if parent_first else 1] == pid
    cid = ids[1 if parent_first else 0]
    assert env.get(cid).depends_on == (pid,)
    got = env.claim("w", 10)
    assert [t.id for t, _ in got] == [pid]
    env.complete(got[0][0], "w")
    assert env.claim_one("w").id == cid


def test_batch_cycle_is_bad_request(env: Env) -> None:
    a, b, c = new_ids(3, 0, 1)
    with pytest.raises(BadRequest, match="cycle"):
        env.engine.submit([TaskSpec("t", b"", id=a, depends_on=(c,)),
                           TaskSpec("t", b"", id=b, depends_on=(a,)),
                           TaskSpec("t", b"", id=c, depends_on=(b,))], env.now)
    env.store.commit()
    assert all(env.status(x) is None for x in (a, b, c))
    assert env.engine.stats()["pending"] == 0


def test_self_dependency_is_bad_request(env: Env) -> None:
    a = new_ids(1, 0, 1)[0]
    with pytest.raises(BadRequest, match="itself"):
        env.engine.submit([TaskSpec("t", b"", id=a, depends_on=(a,))], env.now)
    env.store.commit()
    assert env.status(a) is None


def test_unknown_dependency_is_not_found_and_stores_nothing(env: Env) -> None:
    env.add()
    counts_before = list(env.store.counts)
    payload_keys_before = env.count_keys("payloads")
    a, ghost = new_ids(2, 0, 1)
    with pytest.raises(NotFound):
        env.engine.submit([TaskSpec("t", b"first", id=a),
                           TaskSpec("t", b"", depends_on=(a,)),
                           TaskSpec("t", b"", depends_on=(ghost,))], env.now)
    assert env.store.staged == 0
    env.store.commit()
    assert env.store.counts == counts_before
    assert env.status(a) is None
    assert env.count_keys("live") == 1
    assert env.count_keys("payloads") == payload_keys_before
    assert (env.count_keys("live") + env.count_keys("done")) == 1
    assert env.engine.stats()["by_tier"]["normal"] == 1
    assert len(env.claim("w", 10)) == 1


# -- idempotent submit -----------------------------------------------------------


def test_idempotent_submit(env: Env) -> None:
    cid = new_ids(1, 0, 1)[0]
    (first,) = env.submit(TaskSpec("t", b"one", id=cid))
    assert first == cid
    counts = list(env.store.counts)
    env.advance(10)
    ids = env.submit(TaskSpec("t", b"two", id=cid, priority=255), TaskSpec("t", b"new"))
    assert ids[0] == cid
    assert env.store.counts[PENDING] == counts[PENDING] + 1
    assert env.store.get_payload(cid) == b"one"
    assert env.get(cid).priority == 100
    # the same id again while in progress / completed: still the same, nothing new
    env.complete(env.claim_one("w"), "w")
    assert env.submit(TaskSpec("t", b"three", id=cid)) == [cid]
    assert env.status(cid) == COMPLETED
    assert (env.count_keys("live") + env.count_keys("done")) == 2


def test_same_id_twice_in_batch_is_bad_request(env: Env) -> None:
    cid = new_ids(1, 0, 1)[0]
    with pytest.raises(BadRequest, match="twice"):
        env.engine.submit([TaskSpec("t", b""), TaskSpec("t", b"", id=cid),
                           TaskSpec("t", b"", id=cid)], env.now)
    assert env.store.staged == 0
    env.store.commit()
    assert env.store.counts == [0] * 6
    assert (env.count_keys("live") + env.count_keys("done")) == 0


# -- backpressure ------------------------------------------------------------------


def test_backpressure(make_env) -> None:
    env = make_env(depth_threshold=10)
    env.submit(*[TaskSpec("t", b"") for _ in range(8)])
    with pytest.raises(QueueFull) as err:
        env.engine.submit([TaskSpec("t", b"") for _ in range(3)], env.now)
    assert err.value.retry_after_ms == 1000  # no completions yet
    assert err.value.to_wire()["retry_after_ms"] == 1000
    assert env.store.staged == 0
    assert env.store.counts[PENDING] == 8
    # exactly reaching the threshold is accepted
    env.submit(TaskSpec("t", b""), TaskSpec("t", b""))
    assert env.store.counts[PENDING] == 10
    with pytest.raises(QueueFull):
        env.engine.submit([TaskSpec("t", b"")], env.now)
    # idempotent resubmits of existing ids are not new depth
    existing = env.claim("w", 1)[0][0]
    assert env.submit(TaskSpec("t", b"", id=existing.id)) == [existing.id]
    # in_progress does not count toward depth; failed does
    env.fail(existing, "w")
    assert env.engine.depth() == 10
    with pytest.raises(QueueFull):
        env.engine.submit([TaskSpec("t", b"")], env.now)
    # completions make retry_after an estimate in 100..60000
    for t, _ in env.claim("w", 5):
        env.advance(100)
        env.complete(t, "w")
    assert env.engine.depth() == 5
    with pytest.raises(QueueFull) as err:
        env.engine.submit([TaskSpec("t", b"") for _ in range(6)], env.now)
    assert 100 <= err.value.retry_after_ms <= 60_000
    assert env.store.counts[PENDING] + env.store.counts[FAILED] == 5


def test_backpressure_counts_remote_depth(make_env) -> None:
    env = make_env(depth_threshold=10)
    env.engine.remote_depth = 9
    env.add()
    with pytest.raises(QueueFull):
        env.engine.submit([TaskSpec("t", b"")], env.now)


# -- cancel ----------------------------------------------------------------------


def test_cancel_pending_failed_scheduled_waiting(env: Env) -> None:
    pending = env.add()
    scheduled = env.add(delay_ms=1000)
    parent = env.add(priority=0)
    waiting = env.add(depends_on=(parent,))
    failing = env.add(priority=255)
    env.fail(env.claim_one("w"), "w")  # the priority-255 task
    assert env.status(failing) == FAILED
    for tid in (pending, scheduled, waiting, failing):
        task = env.engine.cancel(tid, env.now)
        assert task.status == CANCELLED
    env.store.commit()
    assert env.engine.stats()["scheduled"] == 0
    env.tick(100_000)
    got = [t.id for t, _ in env.claim("w", 10)]
    assert got == [parent]
    env.complete(env.get(parent), "w")
    env.tick(1)
    assert env.claim("w", 10) == []
    for tid in (pending, scheduled, waiting, failing):
        assert env.status(tid) == CANCELLED
    stats = env.engine.stats()
    assert stats["cancelled"] == 4 and stats["pending"] == 0 and stats["failed"] == 0
    assert sum(stats["by_tier"].values()) == 0


def test_cancel_terminal_is_invalid(env: Env) -> None:
    # (in_progress can be cancelled: tests/unit/test_cancel_running.py)
    a, b = env.add(), env.add()
    ta = env.claim_one("w")
    env.complete(ta, "w")
    with pytest.raises(InvalidState):
        env.engine.cancel(a, env.now)
    env.engine.cancel(b, env.now)
    with pytest.raises(InvalidState):
        env.engine.cancel(b, env.now)
    with pytest.raises(NotFound):
        env.engine.cancel(new_ids(1, 0, 1)[0], env.now)
    assert env.status(a) == COMPLETED


# -- requeue ---------------------------------------------------------------------


@pytest.mark.parametrize("source", [DEAD_LETTER, FAILED])
def test_requeue(env: Env, source: int) -> None:
    tid = env.add(max_retries=1 if source == FAILED else 0)
    env.fail(env.claim_one("w"), "w")
    assert env.status(tid) == source
    env.advance(7)
    task = env.engine.requeue(tid, env.now)
    env.store.commit()
    assert task.status == PENDING and task.retry_count == 0
    assert task.scheduled_ms == env.now and task.error is None
    # the old backoff entry of a requeued failed task does no harm
    env.tick(100_000)
    assert env.status(tid) == PENDING
    assert env.claim_one("w").id == tid
    assert env.claim("w", 10) == []


def test_stale_backoff_entry_does_not_retry_early(env: Env) -> None:
    """failed (due D1) -> requeued -> failed again (due D2 > D1): at D1 it stays failed."""
    tid = env.add(max_retries=3)
    env.fail(env.claim_one("w"), "w")
    d1 = env.get(tid).scheduled_ms
    env.engine.requeue(tid, env.now)
    env.store.commit()
    env.advance(500)
    env.fail(env.claim_one("w"), "w")
    d2 = env.get(tid).scheduled_ms
    assert d2 > d1
    env.now = d1
    env.tick()
    assert env.status(tid) == FAILED
    assert env.claim() == []
    env.now = d2
    env.tick()
    assert env.status(tid) == PENDING


def test_requeue_invalid_state_and_not_found(env: Env) -> None:
    tid = env.add()
    with pytest.raises(InvalidState):
        env.engine.requeue(tid, env.now)
    env.claim_one("w")
    with pytest.raises(InvalidState):
        env.engine.requeue(tid, env.now)
    with pytest.raises(NotFound):
        env.engine.requeue(new_ids(1, 0, 1)[0], env.now)


def test_requeue_slice_type_filter_and_limit(env: Env) -> None:
    ids = {"a": [], "b": []}
    for i in range(10):
        typ = "a" if i % 2 == 0 else "b"
        tid = env.add(typ, max_retries=0)
        ids[typ].append(tid)
    for _ in range(10):
        env.fail(env.claim_one("w"), "w")
    assert env.engine.stats()["dead_letter"] == 10
    done, resume = env.engine.requeue_slice(DEAD_LETTER, "a", 3, None, env.now)
    env.store.commit()
    assert done == 3 and resume is not None
    assert sum(env.status(t) == PENDING for t in ids["a"]) == 3
    assert all(env.status(t) == DEAD_LETTER for t in ids["b"])
    done, resume = env.engine.requeue_slice(DEAD_LETTER, "a", 100, resume, env.now)
    env.store.commit()
    assert done == 2 and resume is None
    assert all(env.status(t) == PENDING for t in ids["a"])
    assert all(env.status(t) == DEAD_LETTER for t in ids["b"])
    done, _ = env.engine.requeue_slice(DEAD_LETTER, None, 100, None, env.now)
    env.store.commit()
    assert done == 5
    assert env.engine.stats()["dead_letter"] == 0 and env.engine.stats()["pending"] == 10
    assert all(env.get(t).retry_count == 0 for t in ids["a"] + ids["b"])


# -- long-poll --------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list] = []

    def __call__(self, tasks) -> None:
        self.calls.append(tasks)


def test_wait_for_claim_delivers_at_once_when_ready(env: Env) -> None:
    tid = env.add()
    rec = Recorder()
    assert env.engine.wait_for_claim("w", 1, None, 5000, env.now, rec) is None
    assert len(rec.calls) == 1 and rec.calls[0][0][0].id == tid


def test_wait_for_claim_delivered_by_later_submit(env: Env) -> None:
    rec = Recorder()
    waiter = env.engine.wait_for_claim("w", 5, ["x"], 5000, env.now, rec)
    assert waiter is not None and rec.calls == []
    assert env.engine.waiting_claims == 1
    env.advance(100)
    env.add("other")
    assert rec.calls == []  # other types do not wake it
    tid = env.add("x", payload=b"hello")
    assert len(rec.calls) == 1
    (task, payload), = rec.calls[0]
    assert task.id == tid and payload == b"hello"
    assert env.status(tid) == IN_PROGRESS and env.get(tid).worker_id == "w"
    assert env.engine.waiting_claims == 0
    env.add("x")
    env.tick(10_000)
    assert len(rec.calls) == 1  # delivered exactly once


def test_wait_for_claim_deadline_delivers_empty(env: Env) -> None:
    rec = Recorder()
    env.engine.wait_for_claim("w", 1, None, 3000, env.now, rec)
    assert env.tick(0) <= env.now + 3000
    env.tick(2999)
    assert rec.calls == []
    env.tick(1)
    assert rec.calls == [[]]
    env.add()
    env.tick(1)
    assert rec.calls == [[]]


def test_cancelled_waiter_never_delivered(env: Env) -> None:
    rec, rec2 = Recorder(), Recorder()
    waiter = env.engine.wait_for_claim("w", 1, None, 3000, env.now, rec)
    env.engine.wait_for_claim("w2", 1, None, 3000, env.now, rec2)
    waiter.cancel()
    assert env.engine.waiting_claims == 1
    tid = env.add()
    env.tick(10_000)
    assert rec.calls == []
    assert len(rec2.calls) == 1 and rec2.calls[0][0][0].id == tid


def test_waiter_served_by_release(env: Env) -> None:
    tid = env.add()
    t = env.claim_one("w0")
    rec = Recorder()
    env.engine.wait_for_claim("w1", 1, None, 60_000, env.now, rec)
    env.result("w0", ResultItem(tid, t.attempt, "released"))
    assert len(rec.calls) == 1 and rec.calls[0][0][0].id == tid


def test_waiter_of_expired_worker_still_served(make_env) -> None:
    """A long-poll may outlive 2 x heartbeat: the worker is forgotten meanwhile,
    and a task arriving afterwards must still be leased to it, not crash."""
    env = make_env(lease_ms=60_000, heartbeat_ms=HB)
    rec = Recorder()
    env.engine.wait_for_claim("w", 1, None, 10_000, env.now, rec)
    env.tick(3 * HB)  # no message from "w" for more than 2 x heartbeat
    tid = env.add()
    assert len(rec.calls) == 1 and rec.calls[0][0][0].id == tid
    assert env.status(tid) == IN_PROGRESS
    # the lease is tracked: the holder can complete it and heartbeats work
    env.engine.heartbeat("w", {}, [tid], env.now)
    (out,) = env.complete(env.get(tid), "w")
    assert out["status"] == "completed"


# -- LIST_TASKS ------------------------------------------------------------------


def _walk(env: Env, status: int, type_=None, lo=0, hi=255, limit=3):
    seen: list[bytes] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = env.engine.list_tasks(status, type_, lo, hi, limit, cursor)
        pages += 1
        assert len(page) <= limit
        assert all(t.status == status for t in page)
        seen.extend(t.id for t in page)
        if cursor is None:
            break
        assert pages < 100
    return seen, pages


@pytest.mark.parametrize("shards", [1, 2])
def test_list_tasks_cursors_visit_each_once(make_env, shards: int) -> None:
    env = make_env(shards)
    expect: dict[bytes, tuple[str, int]] = {}
    rnd = random.Random(3)
    for i in range(21):
        typ = rnd.choice(["a", "b"])
        prio = rnd.choice([0, 100, 150, 250])
        if i % 3 == 0:
            cid = new_ids(1, i % shards, shards)[0]
            tid = env.submit(TaskSpec(typ, b"", priority=prio, id=cid))[0]
        else:
            tid = env.submit(TaskSpec(typ, b"", priority=prio), home=i % shards)[0]
        expect[tid] = (typ, prio)
    if shards == 2:
        assert {owner_of(t, 2) for t in expect} == {0, 1}
    done = env.claim_one("w")
    env.complete(done, "w")
    del expect[done.id]
    seen, pages = _walk(env, PENDING)
    assert len(seen) == len(set(seen)) == 20
    assert set(seen) == set(expect)
    assert pages >= 7
    assert seen == sorted(seen)  # documented order: by id
    for typ in ("a", "b"):
        seen, _ = _walk(env, PENDING, typ)
        assert len(seen) == len(set(seen))
        assert set(seen) == {t for t, (ty, _) in expect.items() if ty == typ}
    for lo, hi in ((100, 199), (0, 99), (200, 255), (150, 255)):
        seen, _ = _walk(env, PENDING, None, lo, hi)
        assert len(seen) == len(set(seen))
        assert set(seen) == {t for t, (_, p) in expect.items() if lo <= p <= hi}
        seen, _ = _walk(env, PENDING, "a", lo, hi)
        assert set(seen) == {t for t, (ty, p) in expect.items() if ty == "a" and lo <= p <= hi}
    seen, _ = _walk(env, COMPLETED)
    assert seen == [done.id]
    assert _walk(env, DEAD_LETTER) == ([], 1)


def test_list_tasks_bad_cursor(env: Env) -> None:
    for bad in ("zz", "", "00" * 15, "00" * 17, "not a cursor"):
        with pytest.raises(BadRequest):
            env.engine.list_tasks(PENDING, None, 0, 255, 10, bad)


def test_list_tasks_in_progress_shows_live_lease(env: Env) -> None:
    tid = env.add()
    env.claim_one("w")
    env.tick(HB)
    expires, _ = env.engine.heartbeat("w", {}, None, env.now)
    (task,), cursor = env.engine.list_tasks(IN_PROGRESS, None, 0, 255, 10, None)
    assert task.id == tid and cursor is None
    assert task.lease_expires_ms == expires


# -- stats -----------------------------------------------------------------------


def test_stats(env: Env) -> None:
    env.submit(TaskSpec("t", b"", priority=250), TaskSpec("t", b"", priority=150),
               TaskSpec("t", b"", priority=10), TaskSpec("t", b"", priority=10),
               TaskSpec("t", b"", priority=120, delay_ms=5000))
    s = env.engine.stats()
    assert s["pending"] == 5 and s["scheduled"] == 1
    assert s["by_tier"] == {"high": 1, "normal": 2, "low": 2}
    first = env.claim_one("w")
    assert first.priority == 250
    second = env.claim_one("w")
    env.complete(first, "w")
    env.fail(second, "w")
    third = env.claim_one("w")
    env.fail(third, "w", retry=False)
    fourth = env.claim_one("w")
    env.engine.cancel(env.add(priority=200), env.now)
    env.store.commit()
    s = env.engine.stats()
    assert {k: s[k] for k in STATUS_NAMES} == {
        "pending": 1, "in_progress": 1, "completed": 1, "failed": 1, "dead_letter": 1,
        "cancelled": 1}
    assert s["scheduled"] == 1
    assert s["by_tier"] == {"high": 0, "normal": 1, "low": 0}
    assert s["workers"] == 1
    assert fourth.status == IN_PROGRESS


# -- workers ---------------------------------------------------------------------


def test_deregister_worker_releases_leases(env: Env) -> None:
    ids = env.submit(*[TaskSpec("t", b"") for _ in range(4)])
    env.engine.register_worker("w", {"hostname": "h", "pid": 3, "types": ["t"]}, env.now)
    w = {w.worker_id: w for w in env.engine.workers()}["w"]
    assert w.hostname == "h" and w.pid == 3
    got = env.claim("w", 3)
    env.claim_one("other")
    env.advance(600)
    assert env.engine.deregister_worker("w", env.now) == 3
    env.store.commit()
    for t, _ in got:
        task = env.get(t.id)
        assert task.status == PENDING and task.retry_count == 0 and task.worker_id is None
    assert env.status(ids[3]) == IN_PROGRESS
    assert env.engine.deregister_worker("w", env.now) == 0
    assert env.engine.deregister_worker("never-seen", env.now) == 0
    assert "w" not in {w.worker_id for w in env.engine.workers()}
    # released tasks are claimable again; the old leases' heap entries (due at
    # T0 + LEASE) do not reclaim the new leases (due at T0 + 600 + LEASE)
    again = env.claim("w2", 10)
    assert sorted(t.id for t, _ in again) == sorted(t.id for t, _ in got)
    assert all(t.attempt == 2 for t, _ in again)
    env.now = T0 + LEASE
    env.tick()
    assert all(env.status(t.id) == IN_PROGRESS for t, _ in again)
    assert env.status(ids[3]) == PENDING  # "other"'s lease did expire


def test_lease_heap_compaction(env: Env) -> None:
    engine = env.engine
    max_heap = 0
    total = 0
    for _round in range(130):
        env.submit(*[TaskSpec("t", b"") for _ in range(100)])
        got = env.claim("w", 100)
        assert len(got) == 100
        live = len(engine._leases.by_id)
        assert len(engine._leases.lease_heap) < 3 * live + 10_001
        env.result("w", *[ResultItem(t.id, t.attempt, "completed") for t, _ in got])
        total += 100
        live = len(engine._leases.by_id)
        assert live == 0
        assert len(engine._leases.lease_heap) < 2 * live + 10_001
        assert len(engine._leases.timeout_heap) < 2 * live + 10_001
        max_heap = max(max_heap, len(engine._leases.lease_heap))
    assert total == 13_000
    assert env.engine.stats()["completed"] == 13_000
    assert max_heap > 5000  # lazily deleted entries did pile up before the rebuild

