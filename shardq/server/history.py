"""The broker's own recent past: throughput and depth over the last hour, so that the dashboard
draws its charts without Prometheus.

Rules:
1. The coordinator samples once a second from the stats rows the shards report anyway (their
   cumulative counters and exact counts): keeping history costs no shard anything.
2. Two rings of fixed length: one point a second for the last FINE_POINTS seconds, and one point
   per COARSE_S seconds for the last hour. Memory is bounded whatever the uptime.
3. Rates come from the difference of cumulative counters between two samples. A shard that
   restarted reports counters from zero: a counter that went down counts its new value as the
   delta (what it did since it restarted), never a negative rate. While a shard is down its last
   counters stay the baseline it is compared with when it is back.
"""

from __future__ import annotations

from collections import deque
from typing import Any

FINE_POINTS = 600  # 10 minutes at 1 s
COARSE_S = 10
COARSE_POINTS = 360  # 1 hour at 10 s
# What each point holds, in this order (the dashboard's charts read these names).
SERIES = ("t", "submitted", "completed", "failed", "pending", "in_progress", "scheduled", "dead_letter")
_RATES = ("submitted", "completed", "failed")
_LEVELS = ("pending", "in_progress", "scheduled", "dead_letter")


def _failed(counters: dict[str, int]) -> int:
    """Failed executions: every failure reason (failures_failed, failures_timeout, ...)."""
    return sum(n for k, n in counters.items() if k.startswith("failures_"))


class BrokerHistory:
    def __init__(self) -> None:
        self.fine: deque[tuple[float, ...]] = deque(maxlen=FINE_POINTS)
        self.coarse: deque[tuple[float, ...]] = deque(maxlen=COARSE_POINTS)
        self._last: dict[str, dict[str, int]] = {}  # shard -> cumulative counters at the last sample
        self._last_t: float | None = None
        self._bucket: list[tuple[float, ...]] = []  # fine points of the coarse point being built

    def sample(self, t: float, reports: dict[int, dict[str, Any]]) -> None:
        """One point at wall time ``t`` (seconds) from each shard's last stats row."""
        deltas = dict.fromkeys(_RATES, 0)
        levels = dict.fromkeys(_LEVELS, 0)
        seen: dict[str, dict[str, int]] = {}
        for shard, row in reports.items():
            if not row.get("up", True):
                if str(shard) in self._last:  # down: its counters are stale; keep the baseline
                    seen[str(shard)] = self._last[str(shard)]
                continue
            counters = row.get("counters") or {}
            now = {"submitted": counters.get("submitted", 0), "completed": counters.get("completed", 0),
                   "failed": _failed(counters)}
            before = self._last.get(str(shard))
            for k in _RATES:
                if before is not None:
                    d = now[k] - before[k]
                    deltas[k] += d if d >= 0 else now[k]  # rule 3: the shard restarted
            seen[str(shard)] = now
            for k in _LEVELS:
                levels[k] += row.get(k, 0)
        elapsed = t - self._last_t if self._last_t is not None else None
        self._last, self._last_t = seen, t
        if elapsed is None or elapsed <= 0:
            return  # the first sample only sets the baseline
        point = (round(t, 3), *(round(deltas[k] / elapsed, 2) for k in _RATES),
                 *(levels[k] for k in _LEVELS))
        self.fine.append(point)
        if self._bucket and int(t // COARSE_S) != int(self._bucket[0][0] // COARSE_S):
            self.coarse.append(_average(self._bucket))  # a 10 s bucket closes when the next begins
            self._bucket = []
        self._bucket.append(point)

    def series(self, resolution: str) -> dict[str, Any]:
        """Column-wise points ({"t": [...], "submitted": [...], ...}), oldest first."""
        points = self.fine if resolution == "1s" else self.coarse
        columns: dict[str, list[float]] = {name: [] for name in SERIES}
        for p in points:
            for name, v in zip(SERIES, p, strict=True):
                columns[name].append(v)
        return {"resolution": resolution, "series": columns}


def _average(points: list[tuple[float, ...]]) -> tuple[float, ...]:
    """One coarse point: the last time, mean rates, last levels."""
    n = len(points)
    last = points[-1]
    rates = tuple(round(sum(p[i] for p in points) / n, 2) for i in range(1, 1 + len(_RATES)))
    return (last[0], *rates, *last[1 + len(_RATES):])


RESOLUTIONS = ("1s", "10s")

# A worker's CPU and memory over time, as its heartbeats reported them: at most one point per
# USAGE_STEP_MS, the last USAGE_POINTS of them (an hour at the default 15 s heartbeat), kept in
# the coordinator's worker registry entry under "usage" as [t_ms, cpu_percent, memory_rss].
USAGE_POINTS = 240
USAGE_STEP_MS = 5000


def record_usage(worker: dict[str, Any], info: dict[str, Any]) -> None:
    t, cpu, rss = info.get("last_seen_ms"), info.get("cpu_percent"), info.get("memory_rss")
    if t is None or (cpu is None and rss is None):
        return
    usage: list[list[Any]] = worker.setdefault("usage", [])
    if usage and t - usage[-1][0] < USAGE_STEP_MS:
        return
    usage.append([t, cpu, rss])
    del usage[:-USAGE_POINTS]
