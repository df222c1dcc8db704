"""/metrics of a real 2-shard server under a little load: complete, consistent, valid.

The coordinator serves it from the shards' reports (every 0.5 s), so the checks poll until the
reports caught up with what GET_STATS says.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_prometheus_scrape import query_until, running_prometheus
from wire import claim_until, complete, fail, heartbeat, hello, stats, submit

from shardq.metrics import METRICS
from shardq.protocol.frames import MsgType
from shardq.testing import ServerProcess


def scrape(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


@pytest.fixture
def loaded(server_factory) -> ServerProcess:
    server = server_factory("--shards", "2", "--heartbeat-interval-ms", "500")
    assert int(server.ready_fields["metrics_port"]) == server.metrics_port > 0
    for shard in (0, 1):
        conn = server.connect()
        assert hello(conn, shard=shard)["shard"] == shard
        t = f"t{shard}"
        submit(conn, *[{"type": t}] * 6)
        got = claim_until(conn, f"w{shard}", [t], 3)
        for task, _ in got[:2]:
            complete(conn, f"w{shard}", task)
        fail(conn, f"w{shard}", got[2][0], "boom")
        heartbeat(conn, f"w{shard}", cpu_percent=25.0, memory_rss=1234567, memory_percent=1.0)
    return server


def test_every_metric_is_served_and_shards_add_up(loaded: ServerProcess) -> None:
    conn = loaded.connect()
    totals = stats(conn)["totals"]
    deadline = time.monotonic() + 10
    while True:
        found = samples(scrape(loaded))
        by_status: dict[str, float] = {}
        for labels, value in found.get("tq_tasks_by_status", []):
            by_status[labels["status"]] = by_status.get(labels["status"], 0) + value
        if all(by_status.get(k) == totals[k] for k in ("pending", "completed", "failed")):
            break
        assert time.monotonic() < deadline, f"/metrics {by_status} never matched GET_STATS {totals}"
        time.sleep(0.2)
    names = set(found)
    for spec in METRICS:
        expected = spec.name + ("_bucket" if spec.kind == "histogram" else "")
        assert expected in names, f"{spec.name} is missing from /metrics"
    assert {labels["shard"] for labels, _ in found["tq_tasks_pending"]} == {"0", "1"}
    submitted = {labels["shard"]: v for labels, v in found["tq_tasks_total"] if labels["outcome"] == "submitted"}
    assert submitted == {"0": 6.0, "1": 6.0}
    processed = {labels["shard"]: v for labels, v in found["tq_task_processing_duration_seconds_count"]}
    assert processed == {"0": 3.0, "1": 3.0}
    assert all(v > 0 for _, v in found["tq_commit_batch_size_count"])
    workers = {labels["worker_id"]: v for labels, v in found["tq_worker_cpu_ratio"]}
    assert workers == {"w0": 0.25, "w1": 0.25}
    # A worker that leaves takes its series with it: no unbounded label sets.
    conn.call(MsgType.DEREGISTER_WORKER, {"worker_id": "w0"})
    deadline = time.monotonic() + 10
    while "w0" in {labels["worker_id"] for labels, _ in samples(scrape(loaded)).get("tq_worker_cpu_ratio", [])}:
        assert time.monotonic() < deadline, "the deregistered worker's series stayed"
        time.sleep(0.2)


def test_promtool_accepts_the_live_exposition(loaded: ServerProcess, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: Debian package `prometheus` (.ci/run installs it)")
    text = scrape(loaded)
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_real_prometheus_scrapes_a_real_server(loaded: ServerProcess, tmp_path: Path) -> None:
    with running_prometheus(tmp_path, loaded.metrics_port) as port:
        series = query_until(port, "tq_tasks_pending", tmp_path, 2)
        assert {r["metric"]["shard"] for r in series} == {"0", "1"}
        submitted = query_until(port, 'tq_tasks_total{outcome="submitted"}', tmp_path, 2)
        assert sorted(float(r["value"][1]) for r in submitted) == [6.0, 6.0]
