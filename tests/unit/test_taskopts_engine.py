"""Task options in the engine (engine/taskopts.py) with a fake clock: expiry of pending, delayed,
retrying and dependency-blocked tasks, and unique keys (held, window, release, recovery).
Runs on the in-memory store and on RocksDB, as test_engine.py does."""

from __future__ import annotations

import pytest

from shardq.engine.engine import ResultItem, TaskSpec
from shardq.engine.taskopts import UNIQUE_TAG
from shardq.errors import BadRequest
from shardq.protocol.task_options import parse_task_options, unique_owner
from shardq.specs import TaskOptions
from shardq.store.layout import UNIQUE_TAG as STORE_UNIQUE_TAG
from shardq.task import COMPLETED, DEAD_LETTER, FAILED, IN_PROGRESS, PENDING
from tests.unit.test_engine import T0, Env


@pytest.fixture(params=["memory", "rocksdb"])
def env(request, tmp_path):
    e = Env(request.param, tmp_path / "db")
    yield e
    e.store.close()


def spec(t="t", expires=None, key=None, window=0, **kw):
    opts = None if expires is None and key is None else TaskOptions(expires, key, window)
    return TaskSpec(t, b"x", options=opts, **kw)


def submit(env, *specs):
    ids, dups = env.engine.submit_with_options(list(specs), env.now)
    env.store.commit()
    return ids, dups


def status(env, raw):
    return env.store.get(raw).status


def test_index_tag_is_the_stores():
    assert UNIQUE_TAG == STORE_UNIQUE_TAG


def test_pending_task_expires_by_the_timer_without_a_claim(env):
    (raw,), _ = submit(env, spec(expires=T0 + 500))
    assert env.engine.tick(env.now) <= T0 + 500
    env.now = T0 + 500
    env.engine.tick(env.now)
    env.store.commit()
    task = env.store.get(raw)
    assert (task.status, task.error) == (DEAD_LETTER, "expired")
    assert env.engine.counters["expired"] == 1
    assert env.engine.claim("w", 5, None, env.now) == []


def test_claim_skips_and_finishes_an_expired_task(env):
    (old, new), _ = submit(env, spec(expires=T0 + 10), spec())
    env.now = T0 + 10  # no tick ran: the claim is the first to see it
    got = env.engine.claim("w", 5, None, env.now)
    assert [t.id for t, _ in got] == [new]
    assert status(env, old) == DEAD_LETTER


def test_delayed_task_expires_before_it_is_due(env):
    (raw,), _ = submit(env, spec(expires=T0 + 100, delay_ms=50))
    env.now = T0 + 60
    env.engine.tick(env.now)
    assert [t.id for t, _ in env.engine.claim("w", 1, None, env.now)] == [raw]  # due, not expired
    (raw2,), _ = submit(env, spec(expires=T0 + 200, delay_ms=150))
    env.now = T0 + 120
    env.engine.tick(env.now)
    env.now = T0 + 200
    env.engine.tick(env.now)
    assert status(env, raw2) == DEAD_LETTER


def test_task_in_progress_at_expiry_runs_to_its_end_but_a_retry_after_it_is_expired(env):
    (raw,), _ = submit(env, spec(expires=T0 + 100, max_retries=3))
    (task, _), = env.engine.claim("w", 1, None, env.now)
    env.now = T0 + 150
    env.engine.tick(env.now)
    assert status(env, raw) == IN_PROGRESS  # started before its expiry: left alone
    env.engine.result("w", [ResultItem(raw, task.attempt, "failed", error="boom")], env.now)
    assert status(env, raw) in (FAILED, DEAD_LETTER)
    env.engine.tick(env.now)
    t = env.store.get(raw)
    assert (t.status, t.error) == (DEAD_LETTER, "expired")


def test_retrying_task_expires_during_its_backoff(env):
    (raw,), _ = submit(env, spec(expires=T0 + 5_000, max_retries=3))
    (task, _), = env.engine.claim("w", 1, None, env.now)
    env.engine.result("w", [ResultItem(raw, task.attempt, "failed", error="boom")], env.now)
    assert status(env, raw) == FAILED
    env.now = T0 + 5_000
    env.engine.tick(env.now)
    assert status(env, raw) == DEAD_LETTER


def test_dependency_blocked_task_expires_and_its_dependents_follow(env):
    (parent,), _ = submit(env, spec())
    (child,), _ = submit(env, spec(expires=T0 + 100, depends_on=(parent,)))
    (grandchild,), _ = submit(env, spec(depends_on=(child,)))
    env.now = T0 + 100
    env.engine.tick(env.now)
    assert status(env, child) == DEAD_LETTER
    t = env.store.get(grandchild)
    assert t.status == DEAD_LETTER and "dependency failed" in t.error


def test_requeue_of_an_expired_task_drops_its_expiry(env):
    (raw,), _ = submit(env, spec(expires=T0 + 10))
    env.now = T0 + 10
    env.engine.tick(env.now)
    env.engine.requeue(raw, env.now)
    env.now += 1000
    env.engine.tick(env.now)
    assert [t.id for t, _ in env.engine.claim("w", 1, None, env.now)] == [raw]


def test_expiry_survives_a_restart(env):
    (raw,), _ = submit(env, spec(expires=T0 + 1000))
    env.restart()
    env.now = T0 + 1000
    env.engine.tick(env.now)
    assert status(env, raw) == DEAD_LETTER


def test_unique_key_answers_the_holder_while_it_lives(env):
    (a,), dups = submit(env, spec(key="k"))
    assert dups == []
    (b,), dups = submit(env, spec(key="k"))
    assert (b, dups) == (a, [0])
    (c,), dups = submit(env, spec("other", key="k"))  # another type: another key
    assert c != a and dups == []
    ids, dups = submit(env, spec(key="z"), spec(key="z"), spec())  # twice in one batch
    assert ids[0] == ids[1] and dups == [1] and ids[2] not in ids[:2]


def test_unique_key_is_released_when_its_task_finishes(env):
    (a,), _ = submit(env, spec(key="k"))
    (task, _), = env.engine.claim("w", 1, None, env.now)
    (b,), _ = submit(env, spec(key="k"))
    assert b == a  # running holds it too
    env.engine.result("w", [ResultItem(a, task.attempt, "completed")], env.now)
    env.store.commit()
    (c,), dups = submit(env, spec(key="k"))
    assert c != a and dups == []


def test_unique_window_holds_after_the_task_finished(env):
    (a,), _ = submit(env, spec(key="k", window=1000))
    (task, _), = env.engine.claim("w", 1, None, env.now)
    env.engine.result("w", [ResultItem(a, task.attempt, "completed")], env.now)
    env.now += 999
    assert submit(env, spec(key="k"))[0] == [a]
    env.now += 1
    (b,), dups = submit(env, spec(key="k"))
    assert b != a and dups == []
    assert status(env, a) == COMPLETED


def test_unique_keys_survive_a_restart(env):
    (a,), _ = submit(env, spec(key="k"))
    (w,), _ = submit(env, spec(key="w", window=10_000))
    env.engine.cancel(w, env.now)
    env.store.commit()
    summary = env.restart()
    assert summary.get("unique_keys") == 2
    assert submit(env, spec(key="k")) == ([a], [0])
    assert submit(env, spec(key="w")) == ([w], [0])


def test_repeated_submit_with_a_client_id_stays_idempotent(env):
    spec1 = spec(key="k")
    (a,), _ = submit(env, spec1)
    again = spec(key="k", id=a)
    assert submit(env, again) == ([a], [])  # the same task, not a duplicate


def test_pending_is_not_counted_for_duplicates(env):
    submit(env, spec(key="k"))
    before = env.store.counts[PENDING]
    submit(env, spec(key="k"))
    assert env.store.counts[PENDING] == before


def test_parse_task_options_errors():
    now = T0
    with pytest.raises(BadRequest, match=r"tasks\[0\]: give expires_at_ms or ttl_ms, not both"):
        parse_task_options({"expires_at_ms": now + 5, "ttl_ms": 5}, "tasks[0].", now)
    with pytest.raises(BadRequest, match=r"expires_at_ms: .* is not in the future"):
        parse_task_options({"expires_at_ms": now - 1}, "tasks[0].", now)
    with pytest.raises(BadRequest, match=r"ttl_ms: must be an integer 1\.\."):
        parse_task_options({"ttl_ms": 0}, "tasks[0].", now)
    with pytest.raises(BadRequest, match="expire .* before it is due"):
        parse_task_options({"ttl_ms": 10, "delay_ms": 10}, "tasks[0].", now)
    with pytest.raises(BadRequest, match="unique_key: must be a non-empty string"):
        parse_task_options({"unique_key": ""}, "tasks[0].", now)
    with pytest.raises(BadRequest, match="unique_window_ms: only with unique_key"):
        parse_task_options({"unique_window_ms": 5}, "tasks[0].", now)
    assert parse_task_options({"ttl_ms": 7}, "", now).expires_at_ms == now + 7
    assert parse_task_options({"unique_key": "a", "unique_window_ms": 3}, "", now) == TaskOptions(None, "a", 3)


def test_unique_owner_is_stable_and_spreads():
    assert unique_owner("t", "k", 1) == 0
    owners = {unique_owner("t", f"k{i}", 3) for i in range(50)}
    assert owners == {0, 1, 2}
    assert unique_owner("t", "k7", 3) == unique_owner("t", "k7", 3)
