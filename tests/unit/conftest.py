"""Fixtures: the store kind engine tests run on; for the metrics tests, a synthetic coordinator
snapshot and promtool."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest

from shardq.metrics import shard_histograms, snapshot_histograms

Snapshot = dict[str, Any]

# The engine tests run on each: the in-memory store (fast, no disk) and RocksDB (the real one).
STORE_KINDS = ("memory", "rocksdb")


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which store an engine test runs on: store/memory.py or store/partitioned.py (RocksDB)."""
    return str(request.param)


def shard_report(shard: int) -> dict[str, Any]:
    """A full REPORT with numbers that differ per shard (so sums are meaningful)."""
    k = shard + 1
    hs = shard_histograms()
    for i in range(10 * k):
        hs["processing_seconds"].observe(0.002 * (i + 1))
        hs["commit_batch_size"].observe(i + 1)
        hs["wal_write_seconds"].observe(0.00003 * (i + 1))
        hs["wal_fsync_seconds"].observe(0.0004 * (i + 1))
        hs["loop_lag_seconds"].observe(0.0002 * (i + 1))
    return {
        "shard": shard, "pid": 1000 + shard, "up": True,
        "counts": {"pending": 10 * k, "in_progress": 2 * k, "completed": 100 * k, "failed": k,
                   "dead_letter": 3 * k, "cancelled": 4 * k, "scheduled": 5 * k},
        "by_tier": {"high": k, "normal": 6 * k, "low": 3 * k},
        "oldest_ready_age_s": {"high": 0.5 * k, "normal": 2.0 * k, "low": 0.0},
        "connections": 7 * k, "rss": 50_000_000 * k, "cpu_seconds": 1.25 * k,
        "counters": {"submitted": 1000 * k, "claimed": 900 * k, "completed": 800 * k, "retried": 30 * k,
                     "dead_lettered": 3 * k, "cancelled": 4 * k, "released": 5 * k, "requeued": 6 * k,
                     "queue_full": 7 * k, "reclaimed_lease_expired": 8 * k, "reclaimed_worker_lost": 9 * k,
                     "reclaimed_timeout": 10 * k, "forwarded": 11 * k, "cross_shard_claims": 12 * k,
                     "store_write_errors": 13 * k, "disk_alarm_refused": 14 * k},
        "histograms": snapshot_histograms(hs),
        "rocksdb": {"live_data_size": 1_000_000 * k, "pending_compaction_bytes": 1000 * k},
        "writable": shard != 1, "disk_free_bytes": 10_000_000 * k, "disk_alarm": shard == 1,
        # per task type (engine/figures.py): histogram buckets by index
        "types": {"email": {"pending": 4 * k, "in_progress": k, "failed": 0, "dead_letter": k,
                            "oldest_due_ms": 1_700_000_000_000, "completed_last_minute": 60 * k,
                            "run": {"40": 10 * k}, "wait": {"20": 5 * k},
                            "run_total": {"buckets": {"40": 20 * k}, "sum_ms": 2000 * k},
                            "wait_total": {"buckets": {"20": 9 * k}, "sum_ms": 90 * k}}},
    }


WORKERS: dict[str, dict[str, Any]] = {
    "w-alpha": {"shard": 0, "hostname": "host-a", "pid": 11, "cpu_percent": 150.0, "memory_rss": 80_000_000,
                "memory_percent": 1.5, "active": 3, "last_seen_ms": 1_700_000_000_000},
    "w-beta": {"shard": 1, "hostname": "host-b", "pid": 12, "cpu_percent": 20.0, "memory_rss": 40_000_000,
               "memory_percent": 0.5, "active": 1, "last_seen_ms": 1_700_000_000_000},
    "w-gamma": {"shard": 1, "hostname": None, "pid": None, "cpu_percent": None, "memory_rss": None,
                "memory_percent": None, "active": 0, "last_seen_ms": 1_700_000_000_000},
}


@pytest.fixture
def make_snapshot() -> Callable[..., Snapshot]:
    """make_snapshot(shards=2, workers=None): the coordinator's view (all WORKERS by default)."""

    def make(shards: int = 2, workers: list[str] | None = None) -> Snapshot:
        names = list(WORKERS) if workers is None else workers
        return {"shards": {str(i): shard_report(i) for i in range(shards)},
                "workers": {w: dict(WORKERS[w]) for w in names}}

    return make


@pytest.fixture
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: it is in the Debian package `prometheus` "
                    "(.ci/run installs it; locally: apt-get install -y prometheus)")
    return path
