"""A shard's figures: its GET_STATS row, what the coordinator's /metrics needs, and the
GET_STATS answer merged from every shard's row.

``ShardStats`` is a mixin of ``ShardServer``: it reads the shard's engine, store, sessions and
histograms, and nothing here changes them.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psutil

from shardq.clock import now_ms
from shardq.metrics import snapshot_histograms
from shardq.task import tier_of


class ShardStats:
    def stats_row(self) -> dict[str, Any]:
        """This shard's GET_STATS row (exact), plus what the metrics need."""
        e = self.engine.stats()
        row: dict[str, Any] = {"shard": self.index, "pid": os.getpid(), "up": True}
        row.update({k: e[k] for k in ("pending", "in_progress", "completed", "failed", "dead_letter",
                                      "cancelled", "scheduled")})
        row["by_tier"] = e["by_tier"]
        row["connections"] = len(self.sessions)
        row["rss"] = _rss()
        row["workers_here"] = e["workers"]
        row["waiting_claims"] = e["waiting_claims"]
        row["counts"] = {k: row[k] for k in ("pending", "in_progress", "completed", "failed",
                                             "dead_letter", "cancelled", "scheduled")}
        row["leases"] = {w.worker_id: len(w.leases) for w in self.engine.workers() if w.leases}
        row["started_ms"] = getattr(self, "started_ms", None)  # when it last (re)started serving
        row["recovered_s"] = getattr(self, "recovered_s", None)  # how long its recovery took
        row["writable"] = self.writable
        row["disk_free_bytes"] = self.disk_free_bytes
        row["disk_alarm"] = self.disk_alarm
        row.update(self._metrics_fields())
        row["types"] = self.engine.type_figures(now_ms())  # per-type series (metrics.py)
        row["counters"] = dict(self.engine.counters)
        if self.peers is not None:
            row["counters"]["forwarded"] = self.peers.forwarded
        row["counters"]["store_write_errors"] = self.write_errors
        row["counters"]["disk_alarm_refused"] = self.disk_refused
        for reason, n in self.auth.failures.items():
            row["counters"][f"auth_failures_{reason}"] = n
        return row

    def _metrics_fields(self) -> dict[str, Any]:
        """What the coordinator's /metrics needs beyond GET_STATS (metrics.py reads it)."""
        processing = self.histograms["processing_seconds"]
        for ms in self.engine.processing_ms:
            processing.observe(ms / 1000)
        self.engine.processing_ms.clear()
        now = now_ms()
        age = dict.fromkeys(("high", "normal", "low"), 0.0)
        for task in self.engine.ready_heads():  # each type's next task: the queue latency served
            tier = tier_of(task.priority)
            age[tier] = max(age[tier], max(0, now - task.scheduled_ms) / 1000)
        cpu = self._process.cpu_times()
        return {"oldest_ready_age_s": age, "cpu_seconds": cpu.user + cpu.system,
                "histograms": snapshot_histograms(self.histograms),
                "rocksdb": {"live_data_size": self.store.property_int("rocksdb.estimate-live-data-size"),
                            "pending_compaction_bytes": self.store.property_int(
                                "rocksdb.estimate-pending-compaction-bytes")}}

    def stats(self, others: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET_STATS: this shard's exact row and the others' last reports (coordinator)."""
        rows = {self.index: self.stats_row()}
        workers = len(self.engine.workers())
        uptime = int(time.monotonic() - self.started)
        if others is not None:
            for key, row in (others.get("shards") or {}).items():
                if int(key) != self.index and row.get("up", True):
                    rows[int(key)] = row
            workers = others.get("workers", workers)
            uptime = max(uptime, others.get("uptime_s", 0))
        names = ("pending", "in_progress", "completed", "failed", "dead_letter", "cancelled", "scheduled")
        totals: dict[str, Any] = {k: sum(r.get(k, 0) for r in rows.values()) for k in names}
        totals["by_tier"] = {t: sum(r.get("by_tier", {}).get(t, 0) for r in rows.values())
                             for t in ("high", "normal", "low")}
        per_shard = []
        for i in sorted(rows):
            r = rows[i]
            per_shard.append({"shard": i, **{k: r.get(k, 0) for k in names[:6]},
                              "scheduled": r.get("scheduled", 0), "by_tier": r.get("by_tier"),
                              "connections": r.get("connections", 0), "rss": r.get("rss", 0),
                              # shardq extensions: for operators and the benchmarks
                              "pid": r.get("pid"),
                              "forwarded": (r.get("counters") or {}).get("forwarded", 0),
                              "cross_shard_claims": (r.get("counters") or {}).get("cross_shard_claims", 0),
                              # task options (engine/taskopts.py): since the shard started
                              "expired": (r.get("counters") or {}).get("expired", 0),
                              "unique_duplicates": (r.get("counters") or {}).get("unique_duplicates", 0),
                              "writable": r.get("writable", True), "disk_free_bytes": r.get("disk_free_bytes"),
                              "disk_alarm": r.get("disk_alarm", False),
                              "started_ms": r.get("started_ms"), "recovered_s": r.get("recovered_s"),
                              "restarts": (others or {}).get("restarts", {}).get(str(i))})
        out = {"totals": totals, "workers": workers,
               "connections": sum(r.get("connections", 0) for r in rows.values()),
               "shards": per_shard, "uptime_s": uptime}
        out.update(self.controls_summary())  # type: ignore[attr-defined]  # server/controls.py
        return out




def _rss() -> int:
    return psutil.Process().memory_info().rss
