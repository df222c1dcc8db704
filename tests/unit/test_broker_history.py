"""The coordinator's history of rates and depth (server/history.py), on made-up shard reports."""

from __future__ import annotations

from shardq.server.history import COARSE_POINTS, FINE_POINTS, BrokerHistory


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
