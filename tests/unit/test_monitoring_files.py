"""docker/grafana, docker/prometheus and docs/operations.md must match what the collector exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shardq.config import MonitoringConfig
from shardq.metrics import METRICS, BrokerCollector, metrics_registry

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docker" / "grafana" / "shardq.json"
PROMETHEUS = ROOT / "docker" / "prometheus"
NAME = re.compile(r"\btq_[a-z_]+")


@pytest.fixture
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dash) for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def exposed_names(snapshot: dict[str, Any]) -> set[str]:
    """The names a query may use: counters as name_total, histograms as name and its three series."""
    text = generate_latest(metrics_registry(BrokerCollector(lambda: snapshot))).decode()
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names.update(fam.name + s for s in ("", "_bucket", "_sum", "_count"))
        else:
            names.add(fam.name)
    return names


def referenced(expr: str, histograms: set[str]) -> set[str]:
    """tq_ names in a PromQL expression, with _bucket/_sum/_count cut off histogram series."""
    out = set()
    for name in NAME.findall(expr):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
                name = name.removesuffix(suffix)
        out.add(name)
    return out


HISTOGRAMS = {m.name for m in METRICS if m.kind == "histogram"}


# --- the dashboard ----------------------------------------------------------------------------------


def test_dashboard_has_a_shard_variable_and_a_datasource_variable(dashboard) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    shard = variables["shard"]
    query = shard["query"]["query"] if isinstance(shard["query"], dict) else shard["query"]
    assert query == "label_values(tq_tasks_pending, shard)"
    assert shard["type"] == "query" and shard["multi"] and shard["includeAll"] and shard["allValue"] == ".*"
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert dashboard["uid"] == "shardq"


def test_every_panel_queries_prometheus_filtered_by_shard(dashboard) -> None:
    ids = [p["id"] for p in dashboard["panels"]] + [p["id"] for p in panels(dashboard)
                                                    if p not in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels(dashboard):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        assert 0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        for t in p["targets"]:
            assert 'shard=~"$shard"' in t["expr"], (p["title"], t["expr"])


def test_dashboard_covers_what_operators_watch(dashboard) -> None:
    exprs = "\n".join(dashboard_exprs(dashboard))
    for needle in ("sum by (tier) (tq_broker_queue_depth",                    # queue depth per tier
                   "sum by (outcome) (rate(tq_tasks_total",                   # throughput
                   "histogram_quantile(0.99, sum by (le) (rate(tq_task_processing_duration_seconds_bucket",
                   "tq_oldest_ready_task_age_seconds",                        # queue latency
                   "tq_worker_cpu_ratio", "tq_worker_memory_rss_bytes", "tq_worker_active_tasks",
                   "tq_reclaims_total", "tq_dead_lettered_total",
                   "tq_event_loop_lag_seconds_bucket",                        # loop lag
                   "tq_wal_write_seconds_bucket", "tq_wal_fsync_seconds_bucket", "tq_commit_batch_size"):
        assert needle in exprs, needle


def test_every_metric_the_dashboard_and_the_alerts_query_is_exposed(dashboard, make_snapshot) -> None:
    exposed = exposed_names(make_snapshot())
    exprs = dashboard_exprs(dashboard) + [r["expr"] for r in alert_rules()]
    exprs.append(dashboard["templating"]["list"][1]["definition"])
    missing = {name for e in exprs for name in referenced(e, HISTOGRAMS) if name not in exposed}
    assert not missing, f"queried but not exposed: {sorted(missing)}"
    assert referenced("rate(tq_commit_batch_size_count[1m])", HISTOGRAMS) == {"tq_commit_batch_size"}


def test_dashboard_queries_are_valid_promql(dashboard, promtool: str, tmp_path: Path) -> None:
    # promtool parses every expression of a rule file: make each query a recording rule.
    rules = [{"record": f"shardq:dashboard_query_{i}",
              "expr": e.replace("$__rate_interval", "1m").replace("$shard", ".*")}
             for i, e in enumerate(dashboard_exprs(dashboard))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_loads_the_dashboard_with_a_prometheus_datasource() -> None:
    prov = ROOT / "docker" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    [source] = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090" and source["isDefault"]
    dash = yaml.safe_load((prov / "dashboards" / "shardq.yml").read_text())
    [provider] = dash["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/var/lib/grafana/dashboards")


# --- Prometheus ---------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_default_metrics_port() -> None:
    cfg = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    [job] = cfg["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"shardq:{MonitoringConfig().prometheus_port}"]
    assert cfg["rule_files"] == ["alerts.yml"]


@pytest.mark.parametrize("args", [["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                                  ["test", "rules", "alerts_test.yml"]], ids=" ".join)
def test_promtool_accepts_the_prometheus_files(args: list[str], promtool: str) -> None:
    result = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=PROMETHEUS, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- docs ------------------------------------------------------------------------------------------------


def test_operations_doc_lists_every_metric_and_alert() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(tq_[a-z_]+)` \|", text, flags=re.MULTILINE))
    assert documented == {m.name for m in METRICS}
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in text, rule["alert"]


def test_readme_links_the_operations_doc() -> None:
    assert "(docs/operations.md)" in (ROOT / "README.md").read_text()
