"""The coordinator's history of rates and depth (server/history.py), on made-up shard reports."""

from __future__ import annotations

from shardq.dashboard.views import sparkline
from shardq.server.history import (
    COARSE_POINTS,
    FINE_POINTS,
    USAGE_POINTS,
    USAGE_STEP_MS,
    BrokerHistory,
    record_usage,
)


def row(submitted: int, completed: int = 0, pending: int = 0, up: bool = True, **failures: int) -> dict:
    return {"up": up, "pending": pending, "in_progress": 0, "scheduled": 0, "dead_letter": 0,
            "counters": {"submitted": submitted, "completed": completed,
                         **{f"failures_{k}": v for k, v in failures.items()}}}


def test_rates_come_from_counter_differences_summed_over_shards() -> None:
    h = BrokerHistory()
    h.sample(100.0, {0: row(10), 1: row(5)})  # the baseline: no point yet
    assert h.series("1s")["series"]["t"] == []
    h.sample(102.0, {0: row(30, 4, pending=7, failed=2, timeout=1), 1: row(15, pending=3)})
    s = h.series("1s")["series"]
    assert s["t"] == [102.0] and s["submitted"] == [15.0] and s["completed"] == [2.0]
    assert s["failed"] == [1.5] and s["pending"] == [10]


def test_a_restarted_shard_counts_from_zero_never_negative() -> None:
    h = BrokerHistory()
    h.sample(0.0, {0: row(1000)})
    h.sample(1.0, {0: row(12)})  # restarted: 12 since
    assert h.series("1s")["series"]["submitted"] == [12.0]
    h.sample(2.0, {0: row(20, up=False)})  # down: its stale row counts nothing
    h.sample(3.0, {0: row(25)})  # back: compared with its last live counters (12)
    assert h.series("1s")["series"]["submitted"] == [12.0, 0.0, 13.0]


def test_ten_second_points_average_the_rates_and_memory_is_bounded() -> None:
    h = BrokerHistory()
    for t in range(0, 25):
        h.sample(float(t), {0: row(t * t, pending=t)})
    coarse = h.series("10s")["series"]
    assert coarse["t"] == [9.0, 19.0]  # closed buckets only, each stamped with its last second
    assert coarse["submitted"][0] == round(sum(2 * t - 1 for t in range(1, 10)) / 9, 2)  # mean of 1..9's
    assert coarse["pending"] == [9, 19]  # the level at the bucket's end
    for t in range(25, 25 + 10 * COARSE_POINTS + 100):
        h.sample(float(t), {0: row(t)})
    assert len(h.fine) == FINE_POINTS and len(h.coarse) == COARSE_POINTS


def test_worker_usage_keeps_one_point_per_step_and_a_bounded_hour() -> None:
    w: dict = {}
    record_usage(w, {"last_seen_ms": 1000, "cpu_percent": 5.0, "memory_rss": 100})
    record_usage(w, {"last_seen_ms": 1000 + USAGE_STEP_MS - 1, "cpu_percent": 9.0})  # too soon
    record_usage(w, {"last_seen_ms": 2000 + USAGE_STEP_MS})  # no figures: nothing to draw
    assert w["usage"] == [[1000, 5.0, 100]]
    for i in range(1, USAGE_POINTS + 50):
        record_usage(w, {"last_seen_ms": 1000 + i * USAGE_STEP_MS, "cpu_percent": float(i), "memory_rss": i})
    assert len(w["usage"]) == USAGE_POINTS and w["usage"][-1][1] == float(USAGE_POINTS + 49)


def test_sparkline_points_scale_into_the_box() -> None:
    assert sparkline([5]) is None and sparkline([None, 3]) is None
    pts = [tuple(map(float, p.split(","))) for p in sparkline([0, 50, 100], top=100.0).split()]
    assert pts[0] == (0.0, 23.0) and pts[-1] == (120.0, 1.0) and pts[1][1] == 12.0
