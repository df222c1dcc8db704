"""Periodic schedules in the engine (engine/schedules.py, engine/timing.py), on a fake clock:
one task per tick, ids from the name and the tick, the misfire policies, pause/resume/remove,
restarts (what was committed survives, a tick fired twice lands once), bad input, and the bound
on what one tick fires. Runs on the in-memory store and on RocksDB (conftest.store_kind)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shardq.engine.schedules import FIRE_SLICE, Schedule, schedule_owner, tick_id
from shardq.engine.timing import Timing
from shardq.errors import BadRequest, InvalidState, NotFound
from shardq.schedule_specs import ScheduleSpec
from shardq.task import PENDING, owner_of
from tests.unit.test_engine import Env

T0 = 1_700_000_000_000  # a multiple of 2000: every-2s ticks fall on T0 + 2000k


@pytest.fixture
def env(tmp_path, store_kind: str):
    e = Env(store_kind, tmp_path / "d", 1, depth_threshold=1000)
    e.now = T0
    yield e
    e.close()


def add(env: Env, name: str = "beat", **kw) -> Schedule:
    kw.setdefault("every_ms", 2000)
    s = env.engine.schedule_add(ScheduleSpec(name=name, type=kw.pop("type", "report"), **kw), env.now)
    env.store.commit()
    return s


def tasks_of(env: Env, name: str, ticks: list[int]) -> list[int]:
    """Which of ``ticks`` have their task in the store."""
    return [t for t in ticks if env.store.status_of(tick_id(name, t, env.shards)) is not None]


def test_each_tick_submits_one_task_with_its_deterministic_id(env):
    s = add(env, payload=b"hello", priority=7)
    assert s.due_ms == T0 + 2000
    assert env.tick(0) == T0 + 2000  # the tick says when the schedule falls due
    env.tick(2000)
    env.tick(2000)
    assert tasks_of(env, "beat", [T0 + 2000, T0 + 4000]) == [T0 + 2000, T0 + 4000]
    task = env.get(tick_id("beat", T0 + 2000, 1))
    assert (task.type, task.priority, task.status) == ("report", 7, PENDING)
    assert env.store.payload_of(task) == b"hello"
    assert env.engine.schedule_get("beat").fired == 2
    assert env.engine.schedule_get("beat").last_task_id == tick_id("beat", T0 + 4000, 1)
    assert env.engine.counters["schedule_fired"] == 2  # tq_schedule_ticks_total{outcome="fired"}


def test_restart_keeps_schedules_and_a_refired_tick_lands_once(env):
    add(env)
    env.tick(2000)
    env.restart()
    assert env.engine.schedule_get("beat").last_tick_ms == T0 + 2000
    env.tick(0)  # nothing due: the tick was written with its task
    # A tick fired again (its record lost but not its task) finds the task and makes none.
    s = env.engine.schedule_get("beat")
    s.last_tick_ms = T0
    env.engine._arm(s, env.now, catch_up=True)
    before = env.store.counts[PENDING]
    env.tick(100)
    assert env.store.counts[PENDING] == before
    assert env.engine.schedule_get("beat").fired == 2  # counted, but the same task


def test_misfire_skip_and_once_after_downtime(env):
    add(env, "skipper", misfire_grace_ms=1000)
    add(env, "catcher", misfire="once", misfire_grace_ms=1000)
    env.tick(2000)
    env.store.close()  # down for 10 s: ticks T0+4000 .. T0+12000 are missed
    env.now += 10_000 + 1500  # T0 + 13500: the latest tick, T0 + 12000, is 1.5 s late
    env.store = env._open()
    env.engine = type(env.engine)(env.store, env.settings)
    env.engine.recover(env.now)
    env.tick(0)
    late = [T0 + 4000 + 2000 * i for i in range(5)]
    assert tasks_of(env, "skipper", late) == []  # past its 1 s grace: dropped
    assert tasks_of(env, "catcher", late) == [T0 + 12000]  # one catch-up, the latest tick
    assert env.engine.schedule_get("skipper").misfires == 1
    assert env.engine.schedule_get("catcher").misfires == 1
    assert env.engine.counters["schedule_misfired"] == 2
    env.tick(500)  # T0 + 14000: both fire on time again
    assert tasks_of(env, "skipper", [T0 + 14000]) == [T0 + 14000]
    assert tasks_of(env, "catcher", [T0 + 14000]) == [T0 + 14000]


def test_a_tick_late_within_its_grace_fires(env):
    add(env, misfire_grace_ms=60_000)
    env.now += 5_500  # ticks at +2000, +4000 missed; +4000 is 1.5 s late: fired, +2000 dropped
    env.tick(0)
    assert tasks_of(env, "beat", [T0 + 2000, T0 + 4000]) == [T0 + 4000]
    assert env.engine.schedule_get("beat").misfires == 1


def test_pause_resume_remove(env):
    add(env)
    env.engine.schedule_pause("beat", True, env.now)
    env.tick(10_000)
    assert env.engine.schedule_get("beat").fired == 0
    assert env.engine.schedule_get("beat").due_ms is None
    env.engine.schedule_pause("beat", False, env.now)  # resumes from the next tick, no catch-up
    env.tick(0)
    assert env.engine.schedule_get("beat").fired == 0
    env.tick(2000)
    assert env.engine.schedule_get("beat").fired == 1
    env.engine.schedule_remove("beat")
    env.store.commit()
    env.tick(10_000)
    with pytest.raises(NotFound):
        env.engine.schedule_get("beat")
    env.restart()
    assert env.engine.schedule_list() == []


def test_paused_state_survives_restart(env):
    add(env, paused=True)
    env.restart()
    env.tick(10_000)
    assert env.engine.schedule_get("beat").spec.paused and env.engine.schedule_get("beat").fired == 0


def test_add_twice_is_refused_replace_keeps_history(env):
    add(env)
    env.tick(2000)
    with pytest.raises(InvalidState, match="exists"):
        add(env)
    s = add(env, every_ms=5000, replace=True, type="other")
    assert (s.fired, s.spec.type, s.due_ms) == (1, "other", T0 + 5000)


@pytest.mark.parametrize("kw, field", [
    ({"cron": "61 * * * *", "every_ms": None}, "cron"),
    ({"cron": "* * *", "every_ms": None}, "cron"),
    ({"cron": "0 0 30 2 *", "every_ms": None}, "cron"),
    ({"cron": "* * * * *", "every_ms": None, "timezone": "Mars/Olympus"}, "timezone"),
    ({"cron": "* * * * *"}, "cron, every_ms"),
    ({"misfire": "later"}, "misfire"),
    ({"timezone": "Europe/Paris"}, "timezone"),  # with every_ms: it would change nothing
    ({"payload": b"x" * (64 * 1024 + 1)}, "payload"),
])
def test_bad_input_names_the_field(env, kw, field):
    with pytest.raises(BadRequest, match=f"^{field}:"):
        add(env, **kw)
    assert env.engine.schedule_list() == []


def test_cron_in_a_time_zone_with_seconds(env):
    # Every 10 seconds by a six-field cron, in Paris.
    add(env, cron="*/10 * * * * *", every_ms=None, timezone="Europe/Paris")
    s = env.engine.schedule_get("beat")
    assert s.due_ms % 10_000 == 0 and T0 < s.due_ms <= T0 + 10_000
    env.now = s.due_ms
    env.tick(0)
    assert s.fired == 1
    assert s.to_wire(0)["next_local"].endswith(("+01:00", "+02:00"))


def _utc(*args) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def test_dst_spring_forward_fires_at_the_gap_end_and_fall_back_fires_once():
    t = Timing("30 2 * * *", None, "Europe/Paris")
    ticks = [t.next_after(_utc(2026, 3, 28))]
    for _ in range(2):
        ticks.append(t.next_after(ticks[-1]))
    # 02:30 CET; 02:30 does not exist on the 29th: 03:00 CEST; then 02:30 CEST.
    assert ticks == [_utc(2026, 3, 28, 1, 30), _utc(2026, 3, 29, 1, 0), _utc(2026, 3, 30, 0, 30)]
    assert t.latest_at_or_before(ticks[1]) == ticks[1] and t.latest_at_or_before(ticks[1] - 1) == ticks[0]
    # 02:30 happens twice on 2026-10-25: it fires once, at the first.
    ticks = [t.next_after(_utc(2026, 10, 24, 12))]
    ticks.append(t.next_after(ticks[0]))
    assert ticks == [_utc(2026, 10, 25, 0, 30), _utc(2026, 10, 26, 1, 30)]


def test_one_tick_fires_a_bounded_slice(env):
    for i in range(FIRE_SLICE + 10):
        add(env, f"s{i}")
    env.now += 2000
    assert env.engine.tick(env.now) == env.now  # more due: run again in the next turn
    env.store.commit()
    assert sum(s.fired for s in env.engine.schedule_list()) == FIRE_SLICE
    env.tick(0)
    assert sum(s.fired for s in env.engine.schedule_list()) == FIRE_SLICE + 10


def test_queue_full_retries_the_same_tick(tmp_path, store_kind):
    env = Env(store_kind, tmp_path / "f", 1, depth_threshold=1)
    env.now = T0
    try:
        env.add()  # the queue is full now
        add(env)
        env.tick(2000)
        assert env.engine.schedule_get("beat").fired == 0
        env.claim_one()  # room again
        env.tick(1000)  # the retry: the same tick, one second late, within grace
        assert tasks_of(env, "beat", [T0 + 2000]) == [T0 + 2000]
    finally:
        env.close()


def test_tick_ids_live_on_the_schedules_owner():
    for shards in (1, 2, 3, 7):
        for name in ("a", "nightly-report", "x" * 200):
            owner = schedule_owner(name, shards)
            assert owner_of(tick_id(name, T0, shards), shards) == owner
            assert tick_id(name, T0, shards) == tick_id(name, T0, shards) != tick_id(name, T0 + 1, shards)
