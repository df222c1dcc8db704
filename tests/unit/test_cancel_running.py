"""CANCEL of an in_progress task (engine/cancelling.py), on both stores with a fake clock: the
lease is revoked at once, the worker hears it in its HEARTBEAT answer, a late RESULT of that
attempt gets the final status, and each race (completed first, worker lost, lease expired,
restart, retry scheduled) ends the one way the docs say."""

from __future__ import annotations

import pytest
from test_engine import LEASE, Env, make_env  # noqa: F401 -- fixtures

from shardq.engine import states
from shardq.errors import InvalidState
from shardq.specs import ResultItem, TaskSpec
from shardq.task import CANCELLED, COMPLETED, DEAD_LETTER, FAILED, PENDING, id_to_str


@pytest.fixture
def env(make_env) -> Env:  # noqa: F811
    return make_env()


def _running(env: Env, worker: str = "w1"):
    tid = env.add()
    task = env.claim_one(worker)
    return tid, task


def test_cancel_running_revokes_the_lease_at_once(env: Env) -> None:
    tid, task = _running(env)
    env.engine.cancel(tid, env.now)
    env.store.commit()
    rec = env.get(tid)
    assert rec.status == CANCELLED
    assert rec.worker_id is None and rec.lease_expires_ms is None
    assert rec.attempt == task.attempt  # the cancelled attempt stays on the record
    assert rec.error == "cancelled while running"
    assert tid not in env.engine._leases.by_id
    # Its lease never expires back to pending: nothing is due for it.
    env.tick(10 * LEASE)
    assert env.status(tid) == CANCELLED


def test_heartbeat_with_active_names_the_cancelled_lease(env: Env) -> None:
    tid, _ = _running(env)
    other, _ = _running(env)
    env.engine.cancel(tid, env.now)
    env.store.commit()
    expires, lost = env.engine.heartbeat("w1", {}, [tid, other], env.now)
    assert lost == [id_to_str(tid)]  # an old worker stops it as a lost lease
    assert env.engine.cancel_notices("w1", [tid, other]) == [id_to_str(tid)]
    # Asked again (the answer was lost on the way): still said, from the record.
    assert env.engine.cancel_notices("w1", [tid, other]) == [id_to_str(tid)]
    # Once the worker stops listing it, nothing more.
    assert env.engine.cancel_notices("w1", [other]) == []
    assert env.engine._leases.by_id[other].expires_ms == expires


def test_heartbeat_without_active_names_it_once(env: Env) -> None:
    tid, _ = _running(env)
    env.engine.cancel(tid, env.now)
    assert env.engine.cancel_notices("w1", None) == [id_to_str(tid)]
    assert env.engine.cancel_notices("w1", None) == []
    assert env.engine.cancel_notices("w2", None) == []  # another worker hears nothing


def test_the_notice_survives_a_restart_for_a_worker_listing_active(env: Env) -> None:
    tid, _ = _running(env)
    env.engine.cancel(tid, env.now)
    env.store.commit()
    env.restart()
    assert env.status(tid) == CANCELLED
    assert tid not in env.engine._leases.by_id  # recovery restores no lease for it
    assert env.engine.cancel_notices("w1", [tid]) == [id_to_str(tid)]


@pytest.mark.parametrize("status", ["completed", "failed", "released"])
def test_a_late_result_of_the_cancelled_attempt_gets_the_final_status(env: Env, status: str) -> None:
    tid, task = _running(env)
    env.engine.cancel(tid, env.now)
    env.store.commit()
    item = ResultItem(tid, task.attempt, status, b"r" if status == "completed" else b"")
    if status == "failed":
        item.error = "boom"
    assert env.result("w1", item) == [{"id": id_to_str(tid), "status": "cancelled"}]
    rec = env.get(tid)
    assert rec.status == CANCELLED and rec.result_len is None
    assert env.store.get_result(tid) in (None, b"")


def test_a_stale_attempt_is_still_lease_lost(env: Env) -> None:
    tid, task = _running(env)
    env.engine.cancel(tid, env.now)
    out = env.result("w1", ResultItem(tid, task.attempt - 1, "completed"))
    assert out[0]["error"]["code"] == "LeaseLost"


def test_completed_just_before_the_cancel(env: Env) -> None:
    tid, task = _running(env)
    env.complete(task)
    with pytest.raises(InvalidState, match="completed"):
        env.engine.cancel(tid, env.now)
    assert env.status(tid) == COMPLETED


def test_worker_lost_before_the_cancel_then_cancel_of_the_requeued_task(env: Env) -> None:
    tid, task = _running(env)
    env.engine.worker_lost("w1", env.now)
    env.store.commit()
    assert env.status(tid) == PENDING  # reclaimed, retry counted
    env.engine.cancel(tid, env.now)
    env.store.commit()
    assert env.status(tid) == CANCELLED
    # The lost worker's late result: not its attempt any more to finish, and the task stays cancelled.
    assert env.result("w1", ResultItem(tid, task.attempt, "completed"))[0]["status"] == "cancelled"
    assert env.status(tid) == CANCELLED


def test_worker_lost_after_the_cancel_reclaims_nothing(env: Env) -> None:
    tid, _ = _running(env)
    env.engine.cancel(tid, env.now)
    assert env.engine.worker_lost("w1", env.now) == 0
    env.store.commit()
    assert env.status(tid) == CANCELLED


def test_lease_expired_without_retries_then_cancel_is_invalid(env: Env) -> None:
    tid = env.add(max_retries=0)
    env.claim_one("w1")
    env.tick(LEASE + 1)
    assert env.status(tid) == DEAD_LETTER
    with pytest.raises(InvalidState):
        env.engine.cancel(tid, env.now)


def test_retry_scheduled_is_cancelled_like_a_pending_task(env: Env) -> None:
    tid, task = _running(env)
    env.fail(task)
    assert env.status(tid) == FAILED
    env.engine.cancel(tid, env.now)
    env.store.commit()
    assert env.status(tid) == CANCELLED
    env.tick(3_600_000)  # its retry time passes: nothing runs
    assert env.claim("w2") == []


def test_dependents_of_a_cancelled_running_task_are_dead_lettered(env: Env) -> None:
    parent = env.add()
    child = env.submit(TaskSpec("t", b"", depends_on=[parent]))[0]
    env.claim_one("w1")
    env.engine.cancel(parent, env.now)
    env.store.commit()
    assert env.status(child) == DEAD_LETTER
    assert env.get(child).error == f"dependency failed: {id_to_str(parent)}"


def test_the_cancelled_slot_is_free_for_another_claim(env: Env) -> None:
    tid, _ = _running(env)
    nxt = env.add()
    env.engine.cancel(tid, env.now)
    got = env.claim_one("w1")
    assert got.id == nxt
    assert set(env.engine._leases.workers["w1"].leases) == {nxt}


def test_the_table_allows_cancel_running_only_from_in_progress() -> None:
    assert states.check("cancel_running", states.IN_PROGRESS) == CANCELLED
    for status in (PENDING, FAILED, COMPLETED, DEAD_LETTER, CANCELLED):
        with pytest.raises(InvalidState):
            states.check("cancel_running", status)
