"""A real Prometheus server scrapes shardq.metrics' endpoint and answers per-shard queries.

The endpoint serves a synthetic 2-shard snapshot here (the collector's own tests cover its content);
what this checks is the part only a real server can: content negotiation (Prometheus asks for
OpenMetrics), ingestion without errors, and the dashboard's kind of queries over the stored series.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardq.metrics import (
    BrokerCollector,
    shard_histograms,
    snapshot_histograms,
    start_metrics_server,
    stop_metrics_server,
)


def report(shard: int) -> dict[str, Any]:
    hs = shard_histograms()
    for i in range(50):
        hs["processing_seconds"].observe(0.01 * (i + 1) * (shard + 1))
        hs["loop_lag_seconds"].observe(0.001)
    return {"shard": shard, "pid": 100 + shard, "up": True,
            "counts": {"pending": 5 * (shard + 1), "in_progress": 1, "completed": 7, "failed": 0,
                       "dead_letter": 0, "cancelled": 0, "scheduled": 0},
            "by_tier": {"high": 0, "normal": 5 * (shard + 1), "low": 0},
            "oldest_ready_age_s": {"high": 0.0, "normal": 1.5, "low": 0.0},
            "connections": 2, "rss": 10_000_000, "cpu_seconds": 0.5,
            "counters": {"submitted": 10, "claimed": 8, "completed": 7},
            "histograms": snapshot_histograms(hs),
            "rocksdb": {"live_data_size": 4096, "pending_compaction_bytes": 0}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture
def metrics_port() -> Iterator[int]:
    snapshot = {"shards": {"0": report(0), "1": report(1)},
                "workers": {"w-1": {"shard": 1, "hostname": "h", "pid": 9, "cpu_percent": 50.0,
                                    "memory_rss": 1000, "memory_percent": 0.1, "active": 1,
                                    "last_seen_ms": 0}}}
    server, port = start_metrics_server(0, "127.0.0.1", BrokerCollector(lambda: snapshot))
    yield port
    stop_metrics_server(server)


@contextlib.contextmanager
def running_prometheus(tmp_path: Path, target_port: int) -> Iterator[int]:
    """A real Prometheus scraping 127.0.0.1:``target_port`` every second; yields its API port."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: it is the Debian package `prometheus` "
                    "(.ci/run installs it; locally: apt-get install -y prometheus)")
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: shardq
    static_configs:
      - targets: ["127.0.0.1:{target_port}"]
""")
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 -- closed at teardown
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query_until(prometheus_port: int, promql: str, tmp_path: Path, want: int) -> list[dict[str, Any]]:
    """Query until ``want`` series come back (Prometheus needs a scrape or two first)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            found = query(prometheus_port, promql)
        except OSError:
            found = []  # not listening yet
        if len(found) >= want:
            return found
        time.sleep(0.25)
    log = (tmp_path / "prometheus.log").read_text(errors="replace")
    pytest.fail(f"no {promql} series after 60 s; prometheus said:\n{log[-4000:]}")


@pytest.fixture
def prometheus(tmp_path: Path, metrics_port: int) -> Iterator[int]:
    with running_prometheus(tmp_path, metrics_port) as port:
        yield port


def test_prometheus_scrapes_per_shard_series(prometheus: int, tmp_path: Path) -> None:
    pending = query_until(prometheus, "tq_tasks_pending", tmp_path, 2)

    assert {r["metric"]["shard"]: float(r["value"][1]) for r in pending} == {"0": 5.0, "1": 10.0}
    assert all(r["metric"]["job"] == "shardq" for r in pending)
    [up] = query(prometheus, 'up{job="shardq"}')
    assert up["value"][1] == "1"
    [health] = query(prometheus, "scrape_samples_scraped")
    assert float(health["value"][1]) > 100

    depth = query(prometheus, "sum by (tier) (tq_broker_queue_depth)")
    assert {r["metric"]["tier"]: float(r["value"][1]) for r in depth} == {"high": 0.0, "normal": 15.0, "low": 0.0}
    submitted = query(prometheus, 'sum(tq_tasks_total{outcome="submitted"})')
    assert float(submitted[0]["value"][1]) == 20.0
    # Histograms arrive whole: a quantile over the stored buckets (constant counts give no rate, so
    # take the quantile of the buckets themselves).
    p50 = query(prometheus, "histogram_quantile(0.5, sum by (shard, le) (tq_task_processing_duration_seconds_bucket))")
    assert {r["metric"]["shard"] for r in p50} == {"0", "1"}
    by_shard = {r["metric"]["shard"]: float(r["value"][1]) for r in p50}
    assert 0.1 < by_shard["0"] < by_shard["1"] < 1.0
    worker = query(prometheus, "tq_worker_cpu_ratio")
    assert [(r["metric"]["worker_id"], r["metric"]["shard"], r["value"][1]) for r in worker] == [("w-1", "1", "0.5")]
