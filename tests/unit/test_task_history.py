"""Task history (engine/history.py, engine/timeline.py) and the explain checks
(engine/explain.py), on the engine with a fake clock and the in-memory store."""

from __future__ import annotations

import random

import orjson
import pytest

from shardq.engine import explain, history
from shardq.engine.engine import Engine, EngineSettings, ResultItem, TaskSpec
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD
from shardq.store.memory import MemoryStore
from shardq.task import Task, id_to_str

T0 = 1_700_000_000_000


class Env:
    def __init__(self, **settings: int) -> None:
        self.now = T0
        self.store = MemoryStore(1)
        kw = dict(shards=1, lease_ms=1000, heartbeat_ms=500, max_frame=MAX_FRAME,
                  max_payload=MAX_PAYLOAD, backoff_base_ms=100)
        kw.update(settings)
        self.engine = Engine(self.store, EngineSettings(**kw), rng=random.Random(1))

    def step(self, ms: int) -> None:
        self.now += ms
        self.engine.tick(self.now)
        self.store.commit()

    def submit(self, **kw: object) -> bytes:
        ids = self.engine.submit([TaskSpec(str(kw.pop("type", "t")), b"p", **kw)], self.now)
        self.store.commit()
        return ids[0]

    def claim(self, worker: str = "w1") -> Task:
        got = self.engine.claim(worker, 1, None, self.now)
        self.store.commit()
        assert len(got) == 1
        return got[0][0]

    def result(self, task: Task, status: str, worker: str = "w1", error: str | None = None) -> None:
        self.engine.result(worker, [ResultItem(task.id, task.attempt, status, error=error)], self.now)
        self.store.commit()

    def events(self, raw: bytes) -> list[dict]:
        task = self.store.get(raw)
        assert task is not None
        return self.engine.history_of(task)["events"]


@pytest.fixture
def env() -> Env:
    return Env()


def names(events: list[dict]) -> list[str]:
    return [e["event"] for e in events]


def test_a_lifecycle_with_a_retry_a_reclaim_and_heartbeats(env: Env) -> None:
    raw = env.submit(max_retries=3)
    env.engine.register_worker("w1", {"hostname": "host-a"}, env.now)
    t = env.claim()
    env.step(10)
    env.result(t, "failed", error="boom")
    env.step(1000)  # the retry is due
    t = env.claim()
    env.step(1500)  # no heartbeat: the lease expires
    t = env.claim("w2")
    for _ in range(3):
        env.step(100)
        env.engine.heartbeat("w2", {}, None, env.now)
    env.step(50)
    env.result(t, "completed", worker="w2")
    ev = env.events(raw)
    assert names(ev) == ["submitted", "claimed", "failed", "retry_scheduled", "claimed", "reclaimed",
                         "claimed", "heartbeats", "completed"]
    assert ev[1] == {"event": "claimed", "t_ms": T0, "attempt": 1, "worker_id": "w1", "hostname": "host-a"}
    assert ev[2]["error"] == "boom" and ev[3]["due_ms"] > ev[3]["t_ms"]
    assert ev[5]["reason"] == "lease expired" and ev[5]["attempt"] == 2
    assert ev[7]["count"] == 3 and ev[7]["last_ms"] - ev[7]["t_ms"] == 200
    assert ev[8]["attempt"] == 3 and ev[8]["run_ms"] == 350


def test_running_attempt_shows_its_heartbeats_live(env: Env) -> None:
    raw = env.submit()
    env.claim()
    env.step(100)
    env.engine.heartbeat("w1", {}, [raw], env.now)
    ev = env.events(raw)
    assert names(ev) == ["submitted", "claimed", "heartbeats"] and ev[-1]["count"] == 1


def test_history_is_bounded_and_says_how_many_were_dropped(env: Env) -> None:
    raw = env.submit(max_retries=100)
    for i in range(40):
        t = env.claim()
        env.result(t, "failed", error=f"failure {i} " + "x" * 1000)
        env.step(10 ** 7)  # past any backoff
    task = env.store.get(raw)
    h = env.engine.history_of(task)
    kept = history.FIRST_KEEP + history.LAST_KEEP
    assert len(h["events"]) == 1 + kept  # "submitted" is the record's created_ms, not stored
    assert h["dropped"] == 3 * 40 - kept and h["dropped_after"] == 1 + history.FIRST_KEEP
    assert h["events"][0]["event"] == "submitted"  # the first ones are kept
    assert h["events"][-2]["error"].startswith("failure 39 ")  # and the last ones
    assert all(len(e.get("error", "")) <= history.ERROR_MAX for e in h["events"])
    assert len(orjson.dumps(task.extras)) < 4096  # what the history adds to each record write
    lines = history.timeline(h)
    assert any(f"{h['dropped']} event(s) dropped" in line for line in lines)


def test_dead_letter_cancel_requeue_and_keys(env: Env) -> None:
    raw = env.submit(max_retries=0)
    t = env.claim()
    env.result(t, "failed", error="bad input")
    env.engine.actor = "k_ops"
    env.engine.requeue(raw, env.now)
    env.engine.cancel(raw, env.now)
    env.engine.actor = None
    env.store.commit()
    ev = env.events(raw)
    assert names(ev) == ["submitted", "claimed", "failed", "dead_lettered", "requeued", "cancelled"]
    assert ev[3]["reason"] == "0 of 0 retries used"
    assert ev[4]["key"] == "k_ops" and ev[5]["key"] == "k_ops"


def test_dependency_resolution_and_failure(env: Env) -> None:
    parent = env.submit()
    child = env.submit(depends_on=(parent,))
    doomed_parent = env.submit(type="d")
    doomed = env.submit(depends_on=(doomed_parent,))
    t = env.engine.claim("w1", 1, ["t"], env.now)[0][0]
    env.result(t, "completed")
    ev = env.events(child)
    assert names(ev) == ["submitted", "dependencies_resolved"] and ev[1]["last"] == id_to_str(parent)
    env.engine.cancel(doomed_parent, env.now)
    env.store.commit()
    ev = env.events(doomed)
    assert names(ev) == ["submitted", "dead_lettered"]
    assert ev[1]["reason"] == f"dependency failed: {id_to_str(doomed_parent)}"


def test_an_ordinary_lifecycle_stores_no_history(env: Env) -> None:
    """Submitted, claimed, completed: the fixed fields say it all (history.py, rule 1)."""
    raw = env.submit()
    t = env.claim()
    env.step(25)
    env.result(t, "completed")
    task = env.store.get(raw)
    assert task.extras is None
    assert env.engine.history_of(task)["events"] == [
        {"event": "submitted", "t_ms": T0},
        {"event": "claimed", "t_ms": T0, "attempt": 1, "worker_id": "w1"},
        {"event": "completed", "t_ms": T0 + 25, "attempt": 1, "run_ms": 25}]


def test_history_survives_the_record_round_trip(env: Env) -> None:
    raw = env.submit(max_retries=0)
    env.result(env.claim(), "failed", error="e")
    task = env.store.get(raw)
    again = Task.decode(raw, task.encode())
    assert history.stored(again) == history.stored(task) and len(history.stored(task)) == 4


# -- explain: the checks, on facts the engine gathers -------------------------------------------

def why(env: Env, raw: bytes, workers: list[dict] | None = None) -> dict:
    facts = env.engine.explain_facts(raw, env.now)
    assert facts is not None
    facts["live_workers"] = workers if workers is not None else [{"worker_id": "w", "types": None}]
    return explain.explain(facts)


def test_explain_every_situation_of_one_shard(env: Env) -> None:
    delayed = env.submit(delay_ms=5000)
    assert why(env, delayed)["reason"] == "delayed"
    assert why(env, delayed)["details"]["due_ms"] == T0 + 5000
    first, second, third = env.submit(), env.submit(), env.submit()
    assert why(env, first)["reason"] == "next"
    q = why(env, third)
    assert q["reason"] == "queued" and q["details"]["ahead"] == 2
    assert why(env, third, workers=[{"worker_id": "w", "types": ["other"]}])["reason"] == "no_worker"
    t = env.claim()
    assert t.id == first
    env.step(100)
    env.engine.heartbeat("w1", {}, None, env.now)
    r = why(env, first)
    assert r["reason"] == "running" and r["details"]["worker_id"] == "w1"
    assert r["details"]["last_heartbeat_ms"] == env.now and r["details"]["attempt"] == 1
    q = why(env, third)
    assert q["details"]["ahead"] == 1 and q["details"]["claims_last_minute"] == 1
    assert "about" in q["message"]
    env.result(t, "failed", error="flaky")
    b = why(env, first)
    assert b["reason"] == "retry_backoff" and "flaky" in b["message"]
    t2 = env.claim()
    env.result(t2, "completed")
    assert why(env, second)["reason"] == "completed"
    env.engine.cancel(third, env.now)
    assert why(env, third)["reason"] == "cancelled"
    dead = env.submit(max_retries=0, type="x")
    t3 = env.engine.claim("w1", 1, ["x"], env.now)[0][0]
    env.result(t3, "failed", error="no such user")
    d = why(env, dead)
    assert d["reason"] == "dead_lettered" and "no such user" in d["message"]
    assert d["details"]["attempts"] == 1


def test_explain_checks_are_an_ordered_list_of_functions() -> None:
    assert explain.CHECKS[0] is explain.completed
    assert explain.CHECKS[-1] is explain.next_in_line
    assert all(callable(c) for c in explain.CHECKS)
