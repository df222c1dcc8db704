"""Insight in the engine (on the memory store): error normalisation, groups and figures kept at
each transition and rebuilt at recovery, delete, bulk slices, dead-letter retention, search."""

from __future__ import annotations

import pytest

from shardq.engine.engine import Engine, EngineSettings
from shardq.engine.figures import bucket, bucket_upper, merge, percentiles
from shardq.engine.insight import TaskFilter
from shardq.engine.search import SearchQuery
from shardq.engine.triage import normalise
from shardq.errors import BadRequest, InvalidState
from shardq.specs import ResultItem, TaskSpec
from shardq.store.memory import MemoryStore
from shardq.task import COMPLETED, DEAD_LETTER, PENDING


@pytest.mark.parametrize("a,b", [
    ("timeout after 30.2 s on 10.0.0.7", "timeout after 29.8 s on 10.0.0.9"),
    ("KeyError: 'user_123'\nTraceback ...", "KeyError: 'user_9'"),
    ("order 3f2a9c1e-1111-4a2b-8c3d-0123456789ab not found", "order 0b2b00b8-b2c4-4138-9f2f-a82ff2c3c3d0 not found"),
    ("bad checksum deadbeefcafe1234", "bad checksum 0123456789abcdef"),
    ("pointer 0x7ffd2a10 freed twice", "pointer 0x55aa freed twice"),
    ("connection refused [::1]:5432", "connection refused [2001:db8::7]:5433"),
    ('could not connect to "db-7" (10.1.2.3), port 5432', 'could not connect to "db-2" (10.1.2.4), port 5433'),
])
def test_one_failure_normalises_to_one_text(a: str, b: str) -> None:
    assert normalise(a) == normalise(b)


def test_different_failures_stay_apart() -> None:
    assert normalise("timeout after 3 s") != normalise("connection refused after 3 s")
    assert normalise("line one\nline two") == "line one"
    assert normalise(None) == ""


def test_histogram_buckets_cover_every_duration_in_order() -> None:
    for ms in [*range(0, 300), 1023, 1024, 30_000, 10**9]:
        b = bucket(ms)
        assert ms <= bucket_upper(b)
        assert b == 0 or ms > bucket_upper(b - 1)


def test_percentiles_come_from_merged_buckets() -> None:
    fast = {bucket(10): 99}
    slow = {bucket(10_000): 1}
    merged = merge([{"t": {"run": fast}}, {"t": {"run": slow}}], now=0)[0]["run_time_s"]
    assert merged["count"] == 100
    assert merged["p50"] == pytest.approx(bucket_upper(bucket(10)) / 1000)
    assert merged["p99"] == pytest.approx(bucket_upper(bucket(10)) / 1000)
    assert percentiles({})["p50"] is None


def _engine(store: MemoryStore | None = None) -> tuple[Engine, MemoryStore]:
    store = store or MemoryStore()
    return Engine(store, EngineSettings(max_frame=16 << 20, max_payload=1 << 20, default_max_retries=0,
                                        dead_retention_ms=10_000)), store


def _dead(e: Engine, store: MemoryStore, n: int, error: str, now: int, task_type: str = "t") -> list[bytes]:
    ids = e.submit([TaskSpec(type=task_type, payload=b"") for _ in range(n)], now)
    store.commit()
    got = e.claim("w", n, [task_type], now)
    e.result("w", [ResultItem(t.id, t.attempt, "failed", b"", error.format(i=i), True)
                   for i, (t, _) in enumerate(got)], now + 5)
    store.commit()
    return ids


def test_groups_follow_every_move_and_survive_recovery() -> None:
    e, store = _engine()
    _dead(e, store, 5, "timeout after {i}.5 s", 1_000)
    other = _dead(e, store, 3, "boom {i}", 2_000)
    groups = {g["error"]: g for g in e.dead_groups()}
    assert groups["timeout after <n> s"]["count"] == 5 and groups["boom <n>"]["count"] == 3
    assert groups["boom <n>"]["first_ms"] == 2_000
    e.requeue(other[0], 3_000)
    e.delete(other[1])
    store.commit()
    assert {g["error"]: g["count"] for g in e.dead_groups()} == {"timeout after <n> s": 5, "boom <n>": 1}
    rebuilt, _ = _engine(store)
    rebuilt.recover(4_000)
    def key(rows: list[dict]) -> list[tuple]:  # (the example and samples depend on scan order)
        return sorted((g["group"], g["type"], g["error"], g["count"], g["first_ms"], g["last_ms"]) for g in rows)

    assert key(rebuilt.dead_groups()) == key(e.dead_groups())
    assert rebuilt.type_figures(4_000)["t"]["pending"] == e.type_figures(4_000)["t"]["pending"] == 1


def test_delete_refuses_unfinished_tasks_and_keeps_counts() -> None:
    e, store = _engine()
    (waiting,) = e.submit([TaskSpec(type="t", payload=b"")], 0)
    store.commit()
    with pytest.raises(InvalidState, match="cancel"):
        e.delete(waiting)
    dead = _dead(e, store, 4, "x", 100)
    for raw in dead[:2]:
        e.delete(raw)
    store.commit()
    assert store.counts[DEAD_LETTER] == 2 and store.counts[PENDING] == 1
    assert store.count_keys("live") == 3


def test_bulk_slices_resume_and_dry_run_changes_nothing() -> None:
    e, store = _engine()
    _dead(e, store, 30, "disk full on /dev/sd{i}", 1_000, task_type="a")
    _dead(e, store, 10, "other", 1_000, task_type="b")
    n, after = e.bulk_slice("count", TaskFilter(error="disk full"), None, 1000, 2_000)
    assert (n, after) == (30, None)
    done, after = e.bulk_slice("delete", TaskFilter(type="a"), None, 7, 2_000)
    assert done == 7 and after is not None
    rest, after = e.bulk_slice("delete", TaskFilter(type="a"), after, 1000, 2_000)
    store.commit()
    assert rest == 23 and after is None
    assert store.counts[DEAD_LETTER] == 10
    with pytest.raises(BadRequest, match="status"):
        e.bulk_slice("delete", TaskFilter(status=PENDING), None, 10, 2_000)


def test_dead_letters_have_their_own_retention() -> None:
    e, store = _engine()
    old = _dead(e, store, 3, "x", 1_000)
    new = _dead(e, store, 2, "x", 9_000)
    assert e.dead_retention_slice(12_000) == 3
    store.commit()
    assert all(store.get(i) is None for i in old) and all(store.get(i) is not None for i in new)
    assert e.dead_groups()[0]["count"] == 2


def test_search_is_bounded_and_resumes() -> None:
    e, store = _engine()
    ids = e.submit([TaskSpec(type="s", payload=b"", priority=i % 3) for i in range(50)], 0)
    store.commit()
    q = SearchQuery(min_priority=2)
    seen: list[bytes] = []
    cursor = None
    calls = 0
    while True:
        tasks, cursor, scanned = e.search(q, cursor, 100, budget=8)
        assert scanned <= 8
        seen += [t.id for t in tasks]
        calls += 1
        if cursor is None:
            break
    assert sorted(seen) == sorted(i for n, i in enumerate(ids) if n % 3 == 2) and calls >= 7
    with pytest.raises(BadRequest, match="cursor"):
        e.search(SearchQuery(type="s"), "s0:00", 10)
    assert store.counts[COMPLETED] == 0
