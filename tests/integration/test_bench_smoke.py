"""`shardq bench` end to end, small: each scenario runs as `python -m shardq bench ... --json`
against the server it starts itself, and its JSON says the work was done and measured."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

BENCH_TIMEOUT_S = 120

COMMON_KEYS = {"scenario", "kind", "tasks", "elapsed_s", "server_cpu_s", "server_cpu_us_per_task",
               "peak_server_rss_bytes", "timed_out"}


def bench(*args: str, results: int = 1) -> dict:
    """Run one benchmark; if it must be stopped, SIGTERM lets it stop its own server first."""
    proc = subprocess.Popen([sys.executable, "-m", "shardq", "bench", *args, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=BENCH_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    doc = orjson.loads(out)
    assert doc["benchmark"] == "shardq"
    assert len(doc["results"]) == results, doc
    return doc["results"][0] if results == 1 else doc["results"]


def assert_server_measured(r: dict) -> None:
    assert r["elapsed_s"] > 0
    assert r["server_cpu_s"] > 0
    assert r["server_cpu_us_per_task"] > 0
    assert r["peak_server_rss_bytes"] > 0
    assert r["timed_out"] is False


@pytest.mark.parametrize("scenario, tasks, name", [
    ("lifecycle", 2000, "lifecycle_b100_p100B_sync-interval_shards1"),
    ("unpipelined", 500, "unpipelined_c4_p100B_sync-interval_shards1"),
    ("delayed-flood", 1000, "delayed-flood_b100_d1000ms_sync-interval_shards1"),
    ("cross-shard", 1000, "cross-shard_b100_p100B_sync-interval"),
])
def test_throughput_scenarios_complete_every_task(scenario: str, tasks: int, name: str) -> None:
    r = bench("--scenario", scenario, "--tasks", str(tasks))
    assert COMMON_KEYS | {"completed", "completed_per_s"} <= r.keys()
    assert r["scenario"] == name
    assert r["tasks"] == tasks
    assert r["completed"] == tasks
    assert r["completed_per_s"] > 0
    assert_server_measured(r)
    if scenario != "unpipelined":  # batched producers time each SUBMIT's round trip
        assert r["latency_of"] == "SUBMIT batch round trip"
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]


def test_submit_latency_reports_percentiles() -> None:
    r = bench("--scenario", "submit-latency", "--tasks", "300")
    assert COMMON_KEYS | {"submitted", "submits_per_s", "p50_us", "p99_us", "p999_us",
                          "max_us"} <= r.keys()
    assert r["scenario"] == "submit-latency_p100B_sync-interval"
    assert r["submitted"] == r["tasks"] == 300
    assert r["submits_per_s"] > 0
    assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]
    assert_server_measured(r)


def test_recovery_restores_every_pending_task() -> None:
    r = bench("--scenario", "recovery", "--tasks", "20000")
    assert {"scenario", "tasks", "submitted", "fill_per_s", "empty_rss_bytes",
            "restarted_rss_bytes", "rss_bytes_per_queued_task", "sigterm_exit_code",
            "restart_to_ready_s", "recovery_s", "pending_after_restart", "errors"} <= r.keys()
    assert r["scenario"] == "recovery_20000"
    assert r["errors"] == []
    assert r["submitted"] == r["tasks"] == 20000
    assert r["pending_after_restart"] == 20000
    assert r["sigterm_exit_code"] == 0
    assert r["fill_per_s"] > 0
    assert r["restart_to_ready_s"] > 0
    assert r["recovery_s"] is not None and r["recovery_s"] >= 0
    assert r["empty_rss_bytes"] > 0 and r["restarted_rss_bytes"] > 0
    assert r["timed_out"] is False


def test_group_commit_runs_1_8_64_producers_with_fsync() -> None:
    runs = bench("--scenario", "group-commit", "--tasks", "256", results=3)
    assert [r["scenario"] for r in runs] == [f"group-commit_c{n}_p100B_sync-always" for n in (1, 8, 64)]
    for r in runs:
        assert r["submitted"] == r["tasks"] == 256
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]
        assert r["server_cpu_s_per_10k_tasks"] > 0
        assert_server_measured(r)


def test_cross_shard_counts_its_hops() -> None:
    r = bench("--scenario", "cross-shard", "--tasks", "1000")
    # Every CLAIM leased from the other shard and every RESULT was forwarded: 2 hops a batch.
    assert r["hops"] >= 2 * (1000 // 100)
    assert 0 < r["hops_per_task"] < 1
