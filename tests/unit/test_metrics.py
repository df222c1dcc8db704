"""shardq.metrics: histograms, the collector over a synthetic 2-shard snapshot, the /metrics server.

The exposition is parsed back with prometheus-client's own parsers, the way Prometheus reads it,
and checked with promtool.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from shardq import metrics
from shardq.metrics import (
    COUNTERS,
    METRICS,
    OUTCOMES,
    SHARD_HISTOGRAMS,
    BrokerCollector,
    Histogram,
    LoopLagProbe,
    metrics_registry,
    on_loop,
    start_metrics_server,
    stop_metrics_server,
)

ROOT = Path(__file__).resolve().parents[2]
Snapshot = dict[str, Any]


def exposition(snapshot: Snapshot) -> str:
    return generate_latest(metrics_registry(BrokerCollector(lambda: snapshot))).decode()


def families(snapshot: Snapshot) -> dict[str, Any]:
    """Parsed families by name as the parser names them (counters without _total)."""
    return {f.name: f for f in text_string_to_metric_families(exposition(snapshot))}


def samples(snapshot: Snapshot, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` (its full name: tq_tasks_total, ..._bucket)."""
    return [(s.labels, s.value) for f in text_string_to_metric_families(exposition(snapshot))
            for s in f.samples if s.name == name]


def by_shard(snapshot: Snapshot, name: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in samples(snapshot, name):
        if all(labels.get(k) == v for k, v in match.items()):
            out[labels["shard"]] = out.get(labels["shard"], 0.0) + value
    return out


def family_name(spec: metrics.MetricSpec) -> str:
    return spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name


# --- Histogram ------------------------------------------------------------------------------------


def test_histogram_counts_each_value_in_its_le_bucket() -> None:
    h = Histogram((1, 2, 5))
    for v in (0.5, 1, 1.5, 5, 7):
        h.observe(v)
    snap = h.snapshot()
    assert snap == {"buckets": [[1.0, 2], [2.0, 3], [5.0, 4], ["+Inf", 5]], "sum": 15.0, "count": 5}
    assert h.count == 5
    assert json.loads(json.dumps(snap)) == snap and orjson.loads(orjson.dumps(snap)) == snap


def test_empty_histogram_snapshot() -> None:
    snap = Histogram((0.1,)).snapshot()
    assert snap == {"buckets": [[0.1, 0], ["+Inf", 0]], "sum": 0.0, "count": 0}


@pytest.mark.parametrize("bounds", [(), (1, 1), (2, 1), (1, float("inf")), (float("nan"),)])
def test_histogram_rejects_bad_bounds(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram(bounds)


@pytest.mark.parametrize(("preset", "low", "high"), [
    (metrics.PROCESSING_SECONDS, 0.001, 3600.0), (metrics.COMMIT_BATCH_SIZE, 1.0, 10000.0),
    (metrics.WAL_SECONDS, 0.00001, 1.0), (metrics.LOOP_LAG_SECONDS, 0.0001, 5.0)])
def test_presets_span_their_ranges(preset: tuple[float, ...], low: float, high: float) -> None:
    assert preset[0] == low and preset[-1] == high
    Histogram(preset)  # valid bounds


def test_shard_histograms_are_the_reported_set() -> None:
    hs = metrics.shard_histograms()
    assert set(hs) == set(SHARD_HISTOGRAMS) == {"processing_seconds", "commit_batch_size",
                                                "wal_write_seconds", "wal_fsync_seconds", "loop_lag_seconds"}
    hs["commit_batch_size"].observe(3)
    assert metrics.snapshot_histograms(hs)["commit_batch_size"]["count"] == 1
    assert metrics.snapshot_histograms(hs)["wal_write_seconds"]["count"] == 0


# --- the collector ---------------------------------------------------------------------------------


def test_every_metric_is_exposed_with_its_type_and_a_shard_label(make_snapshot) -> None:
    fams = families(make_snapshot())
    for spec in METRICS:
        fam = fams.get(family_name(spec))
        assert fam is not None, f"{spec.name} missing from the exposition"
        assert fam.type == spec.kind, spec.name
        assert fam.samples, f"{spec.name} has no samples"
        for s in fam.samples:
            assert "shard" in s.labels, f"{s.name} without a shard label"
            assert set(s.labels) - {"le"} == set(spec.labels), s
        if "worker_id" not in spec.labels:
            assert {s.labels["shard"] for s in fam.samples} == {"0", "1"}, spec.name
    assert set(fams) == {family_name(m) for m in METRICS}


def test_the_briefs_metric_names_are_all_there(make_snapshot) -> None:
    names = {s.name for f in text_string_to_metric_families(exposition(make_snapshot())) for s in f.samples}
    required = """tq_tasks_total tq_tasks_pending tq_tasks_in_progress tq_tasks_by_status
        tq_task_processing_duration_seconds_bucket tq_workers_connected tq_broker_queue_depth
        tq_queue_full_total tq_reclaims_total tq_retries_total tq_dead_lettered_total tq_connections
        tq_oldest_ready_task_age_seconds tq_commit_batch_size_bucket tq_wal_write_seconds_bucket
        tq_wal_fsync_seconds_bucket tq_event_loop_lag_seconds_bucket tq_rocksdb_live_data_bytes
        tq_rocksdb_pending_compaction_bytes tq_process_cpu_seconds_total tq_process_resident_memory_bytes
        tq_shard_up tq_forwarded_requests_total tq_cross_shard_claims_total tq_worker_cpu_ratio
        tq_worker_memory_rss_bytes tq_worker_active_tasks""".split()
    assert not [n for n in required if n not in names]


def test_names_follow_prometheus_conventions() -> None:
    assert len({m.name for m in METRICS}) == len(METRICS)
    for m in METRICS:
        assert m.name.startswith("tq_") and m.name == m.name.lower(), m.name
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
        assert not any(u in m.name for u in ("_ms", "milli", "percent", "kilo", "mega")), m.name
        assert m.help.strip()


def test_per_shard_values_add_up_to_the_snapshot(make_snapshot) -> None:
    snap = make_snapshot()
    reports = snap["shards"].values()
    total = lambda name, **match: sum(by_shard(snap, name, **match).values())  # noqa: E731

    assert total("tq_tasks_pending") == sum(r["counts"]["pending"] for r in reports) == 30
    assert total("tq_tasks_in_progress") == sum(r["counts"]["in_progress"] for r in reports)
    for status in metrics.STATUSES:
        assert total("tq_tasks_by_status", status=status) == sum(r["counts"][status] for r in reports)
    assert total("tq_tasks_scheduled") == sum(r["counts"]["scheduled"] for r in reports)
    for tier in metrics.TIERS:
        assert total("tq_broker_queue_depth", tier=tier) == sum(r["by_tier"][tier] for r in reports)
    assert total("tq_broker_queue_depth") == total("tq_tasks_pending")
    for outcome in OUTCOMES:
        assert total("tq_tasks_total", outcome=outcome) == sum(r["counters"].get(outcome, 0) for r in reports)
    for reason in metrics.RECLAIM_REASONS:
        assert total("tq_reclaims_total", reason=reason) == sum(
            r["counters"][f"reclaimed_{reason}"] for r in reports)
    assert total("tq_retries_total") == total("tq_tasks_total", outcome="retried")
    assert total("tq_dead_lettered_total") == total("tq_tasks_total", outcome="dead_lettered")
    assert total("tq_queue_full_total") == 7 + 14
    assert total("tq_connections") == sum(r["connections"] for r in reports)
    assert total("tq_workers_connected") == len(snap["workers"]) == 3
    assert by_shard(snap, "tq_workers_connected") == {"0": 1.0, "1": 2.0}
    assert by_shard(snap, "tq_process_resident_memory_bytes") == {"0": 50_000_000, "1": 100_000_000}
    assert by_shard(snap, "tq_process_cpu_seconds_total") == {"0": 1.25, "1": 2.5}
    assert by_shard(snap, "tq_rocksdb_live_data_bytes") == {"0": 1_000_000, "1": 2_000_000}
    assert by_shard(snap, "tq_oldest_ready_task_age_seconds", tier="normal") == {"0": 2.0, "1": 4.0}
    assert by_shard(snap, "tq_shard_up") == {"0": 1.0, "1": 1.0}
    assert by_shard(snap, "tq_store_writable") == {"0": 1.0, "1": 0.0}
    assert by_shard(snap, "tq_disk_alarm") == {"0": 0.0, "1": 1.0}
    assert by_shard(snap, "tq_disk_free_bytes") == {"0": 10_000_000, "1": 20_000_000}
    assert by_shard(snap, "tq_store_write_errors_total") == {"0": 13, "1": 26}


def test_histograms_are_exposed_as_snapshotted(make_snapshot) -> None:
    snap = make_snapshot()
    h = snap["shards"]["1"]["histograms"]["commit_batch_size"]
    buckets = {labels["le"]: v for labels, v in samples(snap, "tq_commit_batch_size_bucket")
               if labels["shard"] == "1"}
    assert buckets == {("+Inf" if le == "+Inf" else str(float(le))): n for le, n in h["buckets"]}
    assert by_shard(snap, "tq_commit_batch_size_count")["1"] == h["count"] == 20
    assert by_shard(snap, "tq_commit_batch_size_sum")["1"] == pytest.approx(h["sum"])


def test_worker_series_follow_the_snapshot(make_snapshot) -> None:
    def workers(snap: Snapshot, name: str) -> dict[str, tuple[str, float]]:
        return {labels["worker_id"]: (labels["shard"], v) for labels, v in samples(snap, name)}

    full = make_snapshot()
    assert workers(full, "tq_worker_active_tasks") == {"w-alpha": ("0", 3), "w-beta": ("1", 1),
                                                       "w-gamma": ("1", 0)}
    assert workers(full, "tq_worker_cpu_ratio") == {"w-alpha": ("0", 1.5), "w-beta": ("1", 0.2)}
    assert workers(full, "tq_worker_memory_rss_bytes") == {"w-alpha": ("0", 80_000_000),
                                                           "w-beta": ("1", 40_000_000)}
    assert workers(full, "tq_worker_memory_ratio")["w-alpha"] == ("0", 0.015)

    gone = make_snapshot(workers=["w-beta"])  # alpha left, gamma was declared dead
    text = exposition(gone)
    assert "w-alpha" not in text and "w-gamma" not in text
    for spec in METRICS:
        if "worker_id" in spec.labels:
            assert set(workers(gone, spec.name)) <= {"w-beta"}, spec.name
    assert by_shard(gone, "tq_workers_connected") == {"0": 0.0, "1": 1.0}
    assert "worker_id" not in exposition(make_snapshot(workers=[]))


def test_a_sparse_report_is_zeros_and_absent_series_not_an_error() -> None:
    snap = {"shards": {"0": {"shard": 0, "pid": 5, "up": True, "counts": {"pending": 2}}}, "workers": {}}
    fams = families(snap)
    assert by_shard(snap, "tq_tasks_pending") == {"0": 2.0}
    assert by_shard(snap, "tq_tasks_total", outcome="completed") == {"0": 0.0}
    assert by_shard(snap, "tq_broker_queue_depth") == {"0": 0.0}
    assert by_shard(snap, "tq_connections") == {"0": 0.0}
    assert by_shard(snap, "tq_workers_connected") == {"0": 0.0}
    for name in ("tq_task_processing_duration_seconds", "tq_rocksdb_live_data_bytes",
                 "tq_process_resident_memory_bytes", "tq_process_cpu_seconds"):
        assert fams[name].samples == [], name  # not measured: left out, never a false 0
    assert families({"shards": {}, "workers": {}})["tq_tasks_pending"].samples == []


def test_counter_keys_are_the_ones_the_report_carries() -> None:
    assert set(COUNTERS) == {"submitted", "claimed", "completed", "retried", "dead_lettered", "cancelled",
                             "expired", "unique_duplicates",
                             "released", "requeued", "queue_full", "reclaimed_lease_expired",
                             "reclaimed_worker_lost", "reclaimed_timeout", "forwarded", "cross_shard_claims",
                             "store_write_errors", "disk_alarm_refused", "auth_failures_missing",
                             "auth_failures_unknown_key", "auth_failures_bad_secret", "auth_failures_disabled",
                             "auth_failures_expired", "auth_failures_insecure_channel",
                             "schedule_fired", "schedule_misfired", "schedule_queue_full"}


def test_a_stale_shard_keeps_its_values_with_up_0(make_snapshot) -> None:
    snap = make_snapshot()
    snap["shards"]["1"]["up"] = False
    assert by_shard(snap, "tq_shard_up") == {"0": 1.0, "1": 0.0}
    assert by_shard(snap, "tq_tasks_pending") == {"0": 10.0, "1": 20.0}


def test_shards_are_listed_in_numeric_order() -> None:
    snap = {"shards": {str(i): {"shard": i, "up": True} for i in (10, 2, 1)}, "workers": {}}
    assert [labels["shard"] for labels, _ in samples(snap, "tq_shard_up")] == ["1", "2", "10"]


def test_the_openmetrics_exposition_parses(make_snapshot) -> None:
    registry = metrics_registry(BrokerCollector(make_snapshot))
    text = generate_openmetrics(registry).decode()
    fams = {f.name: f for f in parse_openmetrics(text)}
    assert set(fams) == {family_name(m) for m in METRICS}
    assert fams["tq_tasks"].type == "counter"


def test_promtool_check_metrics_passes(make_snapshot, promtool: str) -> None:
    result = subprocess.run([promtool, "check", "metrics"], input=exposition(make_snapshot()),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_failing_snapshot_fails_the_scrape() -> None:
    def broken() -> Snapshot:
        raise RuntimeError("coordinator gone")

    with pytest.raises(RuntimeError, match="coordinator gone"):
        generate_latest(metrics_registry(BrokerCollector(broken)))


def test_registering_does_not_take_a_snapshot() -> None:
    calls: list[int] = []
    metrics_registry(BrokerCollector(lambda: calls.append(1) or {}))
    assert calls == []


# --- serving ------------------------------------------------------------------------------------------


@pytest.fixture
def served(make_snapshot) -> Iterator[tuple[int, dict[str, Snapshot]]]:
    state = {"snap": make_snapshot()}
    server, port = start_metrics_server(0, "127.0.0.1", BrokerCollector(lambda: state["snap"]))
    try:
        yield port, state
    finally:
        stop_metrics_server(server)


def _get(port: int, path: str = "/metrics", accept: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers["Content-Type"], resp.read().decode()


def test_the_server_on_port_0_answers_metrics(served, make_snapshot) -> None:
    port, state = served
    assert port > 0
    status, ctype, body = _get(port)
    assert status == 200 and ctype.startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    assert {s.labels["shard"] for s in fams["tq_tasks_pending"].samples} == {"0", "1"}
    assert "w-alpha" in body

    state["snap"] = make_snapshot(workers=["w-beta"])  # every scrape reads a fresh snapshot
    assert "w-alpha" not in _get(port)[2]

    status, ctype, body = _get(port, accept="application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text") and body.endswith("# EOF\n")
    assert {f.name for f in parse_openmetrics(body)} == {family_name(m) for m in METRICS}


def test_the_server_reports_a_busy_port(served) -> None:
    port, _ = served
    with pytest.raises(OSError):
        start_metrics_server(port, "127.0.0.1", BrokerCollector(dict))


def test_a_stopped_server_releases_its_port(make_snapshot) -> None:
    server, port = start_metrics_server(0, "127.0.0.1", BrokerCollector(make_snapshot))
    stop_metrics_server(server)
    again, port2 = start_metrics_server(port, "127.0.0.1", BrokerCollector(make_snapshot))
    try:
        assert port2 == port and _get(port2)[0] == 200
    finally:
        stop_metrics_server(again)


# --- on_loop and LoopLagProbe --------------------------------------------------------------------------


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_on_loop_runs_the_snapshot_on_the_loop_thread(loop_thread: asyncio.AbstractEventLoop) -> None:
    threads: list[int] = []

    def snapshot() -> Snapshot:
        threads.append(threading.get_ident())
        return {"shards": {}, "workers": {}}

    call = on_loop(loop_thread, snapshot)
    assert call() == {"shards": {}, "workers": {}}
    assert threads and threads[0] != threading.get_ident()

    def broken() -> Snapshot:
        raise KeyError("x")

    with pytest.raises(KeyError):
        on_loop(loop_thread, broken)()


def test_on_loop_times_out_when_the_loop_is_blocked(loop_thread: asyncio.AbstractEventLoop) -> None:
    ran: list[int] = []
    loop_thread.call_soon_threadsafe(time.sleep, 0.5)
    with pytest.raises(TimeoutError, match="did not answer"):
        on_loop(loop_thread, lambda: ran.append(1), timeout_s=0.1)()
    time.sleep(0.6)
    assert on_loop(loop_thread, lambda: 7)() == 7
    assert ran == []  # the timed-out call was cancelled, not run late


def test_loop_lag_probe_measures_a_blocked_loop() -> None:
    h = Histogram(metrics.LOOP_LAG_SECONDS)
    probe = LoopLagProbe(h, interval_s=0.01)

    async def main() -> None:
        probe.start(asyncio.get_running_loop())
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # a loop turn that blocks
        await asyncio.sleep(0.05)
        probe.stop()
        n = h.count
        await asyncio.sleep(0.05)
        assert h.count == n  # stopped

    asyncio.run(main())
    snap = h.snapshot()
    assert snap["count"] >= 3
    at_most = dict((le, n) for le, n in snap["buckets"] if le != "+Inf")
    assert at_most[0.1] < snap["count"], "the 0.2 s block was not seen"
    assert snap["sum"] >= 0.15


# --- layering -------------------------------------------------------------------------------------------


def test_the_pure_core_does_not_import_metrics() -> None:
    from test_sourcecode import PURE_MODULES

    code = ("import sys; " + "; ".join(f"import {m}" for m in PURE_MODULES)
            + "; print(sorted(m for m in ('shardq.metrics', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout.strip()
    assert out == "[]"
