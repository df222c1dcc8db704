"""Per-type controls in the engine (engine/controls.py), on the in-memory store with a fake
clock: pause holds a type's ready tasks, a cap counts in_progress exactly, a rate spends tokens."""

from __future__ import annotations

import pytest

from shardq.engine.controls import TypeControl
from shardq.engine.engine import Engine, EngineSettings, ResultItem, TaskSpec
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD
from shardq.store.memory import MemoryDisk, MemoryStore

T0 = 1_700_000_000_000


def make_engine(disk: MemoryDisk | None = None) -> Engine:
    return Engine(MemoryStore(disk=disk), EngineSettings(max_frame=MAX_FRAME, max_payload=MAX_PAYLOAD, lease_ms=10_000))


def submit(e: Engine, task_type: str, n: int, now: int = T0) -> list[bytes]:
    return e.submit([TaskSpec(type=task_type, payload=b"x") for _ in range(n)], now)


def control(task_type: str, version: int = 1, **kw) -> TypeControl:
    return TypeControl(task_type, version=version, **kw)


def test_paused_type_is_not_claimed_and_others_are() -> None:
    e = make_engine()
    submit(e, "a", 2)
    submit(e, "b", 1)
    e.apply_control(control("a", paused=True), T0, full_budget=True)
    got = e.claim("w", 10, None, T0)
    assert [t.type for t, _ in got] == ["b"]
    assert e.claim("w", 10, ["a"], T0) == []
    assert "a" not in e.ready_types()
    assert e.control_view("a")["blocked_by"] == "paused"
    e.apply_control(control("a", version=2), T0, full_budget=True)  # resumed: no control left
    assert len(e.claim("w", 10, ["a"], T0)) == 2


def test_waiting_claim_is_served_on_resume() -> None:
    e = make_engine()
    e.apply_control(control("a", paused=True), T0, full_budget=True)
    submit(e, "a", 1)
    got: list = []
    assert e.wait_for_claim("w", 1, ["a"], 5000, T0, got.append) is not None
    e.tick(T0 + 10)
    assert got == []
    e.apply_control(control("a", version=2), T0 + 20, full_budget=True)
    e.tick(T0 + 20)
    assert len(got) == 1 and len(got[0]) == 1


def test_stale_version_is_ignored() -> None:
    e = make_engine()
    assert e.apply_control(control("a", version=3, paused=True), T0)
    assert not e.apply_control(control("a", version=2), T0)
    assert e.control_view("a")["paused"] is True


def test_cap_counts_in_progress_and_frees_on_result() -> None:
    e = make_engine()
    submit(e, "a", 5)
    e.apply_control(control("a", max_concurrency=2), T0, full_budget=True)
    got = e.claim("w", 10, None, T0)
    assert len(got) == 2
    assert e.claim("w", 10, None, T0) == []
    assert e.control_view("a")["blocked_by"] == "concurrency"
    t, _ = got[0]
    e.result("w", [ResultItem(t.id, t.attempt, "completed")], T0 + 1)
    assert len(e.claim("w", 10, None, T0 + 1)) == 1
    assert e.control_view("a")["running"] == 2


def test_cap_counts_leases_that_exist_before_the_control() -> None:
    e = make_engine()
    submit(e, "a", 3)
    assert len(e.claim("w", 2, None, T0)) == 2
    e.apply_control(control("a", max_concurrency=2), T0, full_budget=True)
    assert e.claim("w", 10, None, T0) == []


def test_expired_lease_frees_its_slot() -> None:
    e = make_engine()
    submit(e, "a", 2)
    e.apply_control(control("a", max_concurrency=1), T0, full_budget=True)
    assert len(e.claim("w", 10, None, T0)) == 1
    e.tick(T0 + 20_000)  # the lease expired: back to pending, the slot is free
    assert e.control_view("a")["running"] == 0
    assert len(e.claim("w2", 10, None, T0 + 20_000)) == 1


def test_no_grant_means_no_slot() -> None:
    e = make_engine()
    submit(e, "a", 1)
    e.apply_control(control("a", max_concurrency=5), T0)  # the coordinator has not granted yet
    assert e.claim("w", 1, None, T0) == []
    e.apply_grant("a", 1, 1.0, T0)
    assert len(e.claim("w", 1, None, T0)) == 1


def test_rate_spends_tokens_and_refills() -> None:
    e = make_engine()
    submit(e, "a", 100)
    e.apply_control(control("a", rate=10.0, burst=3), T0, full_budget=True)
    # The bucket starts empty: tokens come at 10/s.
    assert e.claim("w", 100, None, T0) == []
    nxt = e.tick(T0)
    assert nxt is not None and nxt <= T0 + 100
    assert len(e.claim("w", 100, None, T0 + 100)) == 1
    assert len(e.claim("w", 100, None, T0 + 1100)) == 3  # capped at the burst
    total = 0
    for ms in range(1200, 11_200, 50):
        e.tick(T0 + ms)
        total += len(e.claim("w", 100, None, T0 + ms))
    assert 95 <= total <= 101


@pytest.mark.parametrize("when", ["before", "after"])
def test_recover_keeps_restored_leases_counted(when: str) -> None:
    disk = MemoryDisk()
    e = make_engine(disk)
    submit(e, "a", 3)
    e.claim("w", 2, None, T0)
    e.store.commit()
    e2 = make_engine(disk)
    if when == "before":
        e2.apply_control(control("a", max_concurrency=2), T0, full_budget=True)
    e2.recover(T0 + 1)
    if when == "after":
        e2.apply_control(control("a", max_concurrency=2), T0, full_budget=True)
    assert e2.control_view("a")["running"] == 2
    assert e2.claim("w", 10, None, T0 + 2) == []


def test_closed_claims_take_nothing() -> None:
    e = make_engine()
    e.claims_open = False
    submit(e, "a", 1)
    assert e.claim("w", 1, None, T0) == []
    e.open_claims()
    assert len(e.claim("w", 1, None, T0)) == 1
