"""Prometheus metrics: what the shards measure, and the collector the coordinator serves.

Rules:
1. Shards measure, the coordinator exposes. A shard process keeps plain counters and `Histogram`s
   (no prometheus-client objects, no locks, nothing to merge) and sends their snapshots in its stats
   report; at scrape time `BrokerCollector` turns the coordinator's latest view of every shard into
   metric families. One scrape target; every per-shard series has a `shard` label.
2. Series come only from the snapshot. A worker's series exist while the worker is in it, so a
   worker that leaves or dies takes its series with it: no label set grows without bound.
3. Names follow Prometheus conventions: base units (seconds, bytes, ratios), `_total` on counters.
   `METRICS` is the list; docs/operations.md describes the same list, and a test keeps them equal.
4. The pure core (protocol/, engine/) never imports this module; give the engine a plain callable
   (``histogram.observe``) if it must measure something.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import socket
import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shardq.keys import FAILURE_REASONS as AUTH_FAILURE_REASONS
from shardq.task import STATUS_NAMES, TIERS

if TYPE_CHECKING:
    import asyncio

    from prometheus_client.metrics_core import Metric

    from shardq.tls import ServerTLS

log = logging.getLogger("shardq.metrics")

# --- the shard side: histograms ----------------------------------------------------------------

INF = "+Inf"  # the bound of the last bucket in a snapshot: a string, because JSON has no infinity

# Bucket bounds (upper, inclusive: Prometheus `le`). Each preset spans the range the brief of its
# metric needs, at about 2.5x per step, so a quantile is never more than one step off.
PROCESSING_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                      30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)            # 1 ms .. 1 h
COMMIT_BATCH_SIZE = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
                     10000.0)                                                      # mutations
WAL_SECONDS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
               0.05, 0.1, 0.25, 0.5, 1.0)                                          # 10 us .. 1 s
LOOP_LAG_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0)                                                 # 100 us .. 5 s

# The histograms a shard report carries, by their key in REPORT["histograms"].
SHARD_HISTOGRAMS: dict[str, tuple[float, ...]] = {
    "processing_seconds": PROCESSING_SECONDS,   # per RESULT completed/failed: claim to result
    "commit_batch_size": COMMIT_BATCH_SIZE,     # per group commit: mutations in the batch
    "wal_write_seconds": WAL_SECONDS,           # per group commit: the RocksDB write
    "wal_fsync_seconds": WAL_SECONDS,           # per WAL fsync (sync=always: per commit)
    "loop_lag_seconds": LOOP_LAG_SECONDS,       # per LoopLagProbe tick
}


class Histogram:
    """Fixed-bucket histogram for one process's hot path: observe() is a bisect and two additions.

    Not thread-safe: one event loop owns it. ``snapshot()`` is plain JSON-able data:
    ``{"buckets": [[le, cumulative_count], ..., ["+Inf", count]], "sum": float, "count": int}``.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        b = tuple(float(x) for x in bounds)
        if not b or not all(math.isfinite(x) for x in b) or any(x >= y for x, y in zip(b, b[1:])):
            raise ValueError(f"histogram bounds must be finite and strictly increasing: {bounds!r}")
        self.bounds = b
        self.counts = [0] * (len(b) + 1)  # counts[i]: bounds[i-1] < value <= bounds[i]; last: > all
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value (a number, not NaN)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> dict[str, Any]:
        buckets: list[list[Any]] = []
        total = 0
        for le, n in zip(self.bounds, self.counts):
            total += n
            buckets.append([le, total])
        total += self.counts[-1]
        buckets.append([INF, total])
        return {"buckets": buckets, "sum": self.sum, "count": total}


def shard_histograms() -> dict[str, Histogram]:
    """A fresh set of the histograms a shard reports (keys of SHARD_HISTOGRAMS)."""
    return {name: Histogram(bounds) for name, bounds in SHARD_HISTOGRAMS.items()}


def snapshot_histograms(histograms: Mapping[str, Histogram]) -> dict[str, dict[str, Any]]:
    """REPORT["histograms"]: every histogram's snapshot by name."""
    return {name: h.snapshot() for name, h in histograms.items()}


class LoopLagProbe:
    """Event-loop lag: a timer asks to run every ``interval_s`` and records how late it ran.

    A loop turn that blocks for 200 ms shows up as one observation of about 0.2 s. Under uvloop the
    timers have millisecond resolution, so lags below 1 ms read as noise around 0-1 ms.
    """

    def __init__(self, histogram: Histogram, interval_s: float = 0.25) -> None:
        self.histogram = histogram
        self.interval_s = interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = time.monotonic() + self.interval_s
        self._handle = self._loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        self.histogram.observe(max(0.0, time.monotonic() - self._due))
        self._arm()


# --- the report ----------------------------------------------------------------------------------

STATUSES = STATUS_NAMES  # task.py's, in status-code order; TIERS (low, normal, high) is task.py's too
OUTCOMES = ("submitted", "claimed", "completed", "retried", "dead_lettered", "cancelled", "released",
            "requeued", "expired", "unique_duplicates")
RECLAIM_REASONS = ("lease_expired", "worker_lost", "timeout")  # REPORT counters reclaimed_<reason>
SCHEDULE_OUTCOMES = ("fired", "misfired", "queue_full")  # REPORT counters schedule_<outcome>
# Every key of REPORT["counters"] the collector reads (a shard may send more; a missing one is 0).
COUNTERS = (*OUTCOMES, "queue_full", *(f"reclaimed_{r}" for r in RECLAIM_REASONS), "forwarded",
            "cross_shard_claims", "store_write_errors", "disk_alarm_refused",
            *(f"auth_failures_{r}" for r in AUTH_FAILURE_REASONS),
            *(f"schedule_{o}" for o in SCHEDULE_OUTCOMES))

# --- the metrics -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family: its full name (counters end in _total), type, labels and help text."""

    name: str
    kind: str  # "counter" | "gauge" | "histogram"
    labels: tuple[str, ...]
    help: str


_S = ("shard",)
_W = ("worker_id", "shard")
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("tq_shard_up", "gauge", _S,
               "1 if the shard process is connected to the coordinator, 0 if its last report is stale."),
    MetricSpec("tq_tasks_total", "counter", ("shard", "outcome"),
               "Task events since the shard process started, by outcome: submitted, claimed, completed, "
               "retried, dead_lettered, cancelled, released, requeued."),
    MetricSpec("tq_tasks_pending", "gauge", _S, "Tasks in status pending (ready, delayed or waiting on "
               "dependencies)."),
    MetricSpec("tq_tasks_in_progress", "gauge", _S, "Tasks leased to a worker."),
    MetricSpec("tq_tasks_by_status", "gauge", ("shard", "status"),
               "Tasks stored, by status (pending, in_progress, completed, failed, dead_letter, cancelled)."),
    MetricSpec("tq_tasks_scheduled", "gauge", _S,
               "Pending or failed tasks waiting for a time: a delay or a retry backoff."),
    MetricSpec("tq_broker_queue_depth", "gauge", ("shard", "tier"),
               "Pending tasks by priority tier: high (200-255), normal (100-199), low (0-99)."),
    MetricSpec("tq_oldest_ready_task_age_seconds", "gauge", ("shard", "tier"),
               "How long the oldest ready task of the tier has been ready (0 when none is): queue latency."),
    MetricSpec("tq_task_processing_duration_seconds", "histogram", _S,
               "From claim to a completed or failed result."),
    MetricSpec("tq_retries_total", "counter", _S,
               "Attempts that failed (or were reclaimed) and will run again."),
    MetricSpec("tq_dead_lettered_total", "counter", _S, "Tasks moved to the dead-letter queue."),
    MetricSpec("tq_queue_full_total", "counter", _S, "SUBMIT requests refused with QueueFull."),
    MetricSpec("tq_reclaims_total", "counter", ("shard", "reason"),
               "Leases taken back from workers, by reason: lease_expired, worker_lost, timeout."),
    MetricSpec("tq_forwarded_requests_total", "counter", _S,
               "Requests this shard forwarded to the shard that owns the task."),
    MetricSpec("tq_cross_shard_claims_total", "counter", _S,
               "Tasks this shard claimed from another shard's ready queue for its workers."),
    MetricSpec("tq_schedule_ticks_total", "counter", ("shard", "outcome"),
               "Ticks of the schedules the shard owns, by outcome: fired (its task submitted), misfired "
               "(dropped by the misfire policy), queue_full (refused by QueueFull; tried again)."),
    MetricSpec("tq_connections", "gauge", _S, "Client and worker connections held by the shard."),
    MetricSpec("tq_workers_connected", "gauge", _S, "Live workers whose connection is on the shard."),
    MetricSpec("tq_commit_batch_size", "histogram", _S, "Mutations per group commit (one RocksDB write)."),
    MetricSpec("tq_wal_write_seconds", "histogram", _S, "Duration of a group commit's RocksDB write."),
    MetricSpec("tq_wal_fsync_seconds", "histogram", _S, "Duration of a WAL fsync."),
    MetricSpec("tq_event_loop_lag_seconds", "histogram", _S,
               "How late the shard's event loop ran a timer: time the loop was blocked."),
    MetricSpec("tq_rocksdb_live_data_bytes", "gauge", _S, "RocksDB estimate of live data size."),
    MetricSpec("tq_rocksdb_pending_compaction_bytes", "gauge", _S,
               "RocksDB estimate of bytes compaction still has to rewrite."),
    MetricSpec("tq_store_writable", "gauge", _S,
               "1 while the shard's RocksDB takes writes, 0 while they fail (a full disk): then requests "
               "that write are answered Unavailable."),
    MetricSpec("tq_store_write_errors_total", "counter", _S,
               "Group commits (and probe writes) of the shard that failed; each answered its requests "
               "with Unavailable."),
    MetricSpec("tq_disk_free_bytes", "gauge", _S, "Free bytes on the disk of the shard's data dir "
               "(statvfs, checked every second)."),
    MetricSpec("tq_disk_alarm", "gauge", _S,
               "1 while free space is below persistence.min_free_disk_bytes: SUBMITs are refused."),
    MetricSpec("tq_disk_alarm_refused_total", "counter", _S,
               "SUBMIT requests refused because free disk space was below the watermark."),
    MetricSpec("tq_auth_failures_total", "counter", ("shard", "reason"),
               "HELLOs refused, by reason: missing, unknown_key, bad_secret, disabled, expired, "
               "insecure_channel (an API key over plaintext from a non-loopback address)."),
    MetricSpec("tq_process_cpu_seconds_total", "counter", _S, "CPU time (user + system) of the shard process."),
    MetricSpec("tq_process_resident_memory_bytes", "gauge", _S, "Resident memory of the shard process."),
    MetricSpec("tq_worker_cpu_ratio", "gauge", _W,
               "CPU use of a worker and its pool processes from its last heartbeat; 1.0 = one core."),
    MetricSpec("tq_worker_memory_rss_bytes", "gauge", _W,
               "Resident memory of a worker and its pool processes from its last heartbeat."),
    MetricSpec("tq_worker_memory_ratio", "gauge", _W,
               "A worker's resident memory as a share of its host's memory."),
    MetricSpec("tq_worker_active_tasks", "gauge", _W, "Tasks a worker holds leases on."),
)

# Report fields that map one to one onto a series: metric name -> where it is in a REPORT.
_SIMPLE_COUNTERS = {"tq_retries_total": "retried", "tq_dead_lettered_total": "dead_lettered",
                    "tq_queue_full_total": "queue_full", "tq_forwarded_requests_total": "forwarded",
                    "tq_cross_shard_claims_total": "cross_shard_claims",
                    "tq_store_write_errors_total": "store_write_errors",
                    "tq_disk_alarm_refused_total": "disk_alarm_refused"}
_HISTOGRAMS = {"tq_task_processing_duration_seconds": "processing_seconds",
               "tq_commit_batch_size": "commit_batch_size", "tq_wal_write_seconds": "wal_write_seconds",
               "tq_wal_fsync_seconds": "wal_fsync_seconds", "tq_event_loop_lag_seconds": "loop_lag_seconds"}
_ROCKSDB = {"tq_rocksdb_live_data_bytes": "live_data_size",
            "tq_rocksdb_pending_compaction_bytes": "pending_compaction_bytes"}

_FAMILY = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}


def _families() -> dict[str, Metric]:
    return {m.name: _FAMILY[m.kind](m.name, m.help, labels=m.labels) for m in METRICS}


def _buckets(snapshot: Mapping[str, Any]) -> list[tuple[str, float]]:
    return [(floatToGoString(float(le)), n) for le, n in snapshot["buckets"]]


class BrokerCollector(Collector):
    """The coordinator's view as metric families, read from ``snapshot_fn()`` at every scrape.

    ``snapshot_fn()`` returns::

        {"shards": {"0": REPORT, "1": REPORT, ...},      # keys: shard indexes as strings
         "workers": {worker_id: {"shard": int, "cpu_percent": float | None, "memory_rss": int | None,
                                 "memory_percent": float | None, "active": int, ...}}}
        REPORT = {"shard": int, "pid": int, "up": bool,
                  "counts": {STATUSES..., "scheduled": int}, "by_tier": {TIERS...: int},
                  "oldest_ready_age_s": {TIERS...: float}, "connections": int, "rss": int,
                  "cpu_seconds": float, "counters": {COUNTERS...: int},
                  "histograms": {SHARD_HISTOGRAMS keys: Histogram.snapshot()},
                  "rocksdb": {"live_data_size": int, "pending_compaction_bytes": int},
                  "writable": bool, "disk_free_bytes": int | None, "disk_alarm": bool}

    It runs on the metrics server's thread: what it returns must not change while the collector
    reads it (build it on the event loop: ``on_loop``). Extra keys are ignored.

    A REPORT's counters, counts, tiers and connections default to 0; a missing histogram, RocksDB or
    process figure leaves that series out for the shard rather than reporting a false 0. A shard
    whose report is stale (``up`` false) keeps its last values, with ``tq_shard_up`` 0.
    """

    def __init__(self, snapshot_fn: Callable[[], Mapping[str, Any]]) -> None:
        self.snapshot_fn = snapshot_fn

    def describe(self) -> Iterator[Metric]:
        """The families without samples: lets the registry check names without a snapshot."""
        return iter(_families().values())

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.snapshot_fn()
        except Exception:
            log.exception("metrics snapshot failed; the scrape fails")
            raise
        f = _families()
        shards: Mapping[str, Any] = snap.get("shards") or {}
        workers: Mapping[str, Any] = snap.get("workers") or {}
        for key in sorted(shards, key=_shard_order):
            _add_shard(f, str(key), shards[key])
        on_shard = Counter(str(w["shard"]) for w in workers.values() if w.get("shard") is not None)
        for shard in sorted({*map(str, shards), *on_shard}, key=_shard_order):
            f["tq_workers_connected"].add_metric([shard], on_shard.get(shard, 0))
        for wid in sorted(workers):
            _add_worker(f, str(wid), workers[wid])
        return iter(f.values())


def _shard_order(key: Any) -> tuple[int, str]:
    text = str(key)
    return (int(text), "") if text.isdigit() else (-1, text)


def _add_shard(f: dict[str, Any], shard: str, r: Mapping[str, Any]) -> None:
    labels = [shard]
    counts = r.get("counts") or {}
    counters = r.get("counters") or {}
    f["tq_shard_up"].add_metric(labels, 1.0 if r.get("up", True) else 0.0)
    for outcome in OUTCOMES:
        f["tq_tasks_total"].add_metric([shard, outcome], counters.get(outcome, 0))
    f["tq_tasks_pending"].add_metric(labels, counts.get("pending", 0))
    f["tq_tasks_in_progress"].add_metric(labels, counts.get("in_progress", 0))
    for status in STATUSES:
        f["tq_tasks_by_status"].add_metric([shard, status], counts.get(status, 0))
    f["tq_tasks_scheduled"].add_metric(labels, counts.get("scheduled", 0))
    by_tier = r.get("by_tier") or {}
    age = r.get("oldest_ready_age_s") or {}
    for tier in TIERS:
        f["tq_broker_queue_depth"].add_metric([shard, tier], by_tier.get(tier, 0))
        f["tq_oldest_ready_task_age_seconds"].add_metric([shard, tier], age.get(tier, 0.0))
    for name, key in _SIMPLE_COUNTERS.items():
        f[name].add_metric(labels, counters.get(key, 0))
    for reason in RECLAIM_REASONS:
        f["tq_reclaims_total"].add_metric([shard, reason], counters.get(f"reclaimed_{reason}", 0))
    for reason in AUTH_FAILURE_REASONS:
        f["tq_auth_failures_total"].add_metric([shard, reason], counters.get(f"auth_failures_{reason}", 0))
    for outcome in SCHEDULE_OUTCOMES:
        f["tq_schedule_ticks_total"].add_metric([shard, outcome], counters.get(f"schedule_{outcome}", 0))
    f["tq_connections"].add_metric(labels, r.get("connections", 0))
    histograms = r.get("histograms") or {}
    for name, key in _HISTOGRAMS.items():
        if key in histograms:
            h = histograms[key]
            f[name].add_metric(labels, _buckets(h), h["sum"])
    rocksdb = r.get("rocksdb") or {}
    for name, key in _ROCKSDB.items():
        if rocksdb.get(key) is not None:
            f[name].add_metric(labels, rocksdb[key])
    f["tq_store_writable"].add_metric(labels, 0.0 if r.get("writable") is False else 1.0)
    f["tq_disk_alarm"].add_metric(labels, 1.0 if r.get("disk_alarm") else 0.0)
    if r.get("disk_free_bytes") is not None:
        f["tq_disk_free_bytes"].add_metric(labels, r["disk_free_bytes"])
    if r.get("cpu_seconds") is not None:
        f["tq_process_cpu_seconds_total"].add_metric(labels, r["cpu_seconds"])
    if r.get("rss") is not None:
        f["tq_process_resident_memory_bytes"].add_metric(labels, r["rss"])


def _add_worker(f: dict[str, Any], wid: str, w: Mapping[str, Any]) -> None:
    labels = [wid, "" if w.get("shard") is None else str(w["shard"])]
    if w.get("cpu_percent") is not None:
        f["tq_worker_cpu_ratio"].add_metric(labels, w["cpu_percent"] / 100.0)
    if w.get("memory_rss") is not None:
        f["tq_worker_memory_rss_bytes"].add_metric(labels, w["memory_rss"])
    if w.get("memory_percent") is not None:
        f["tq_worker_memory_ratio"].add_metric(labels, w["memory_percent"] / 100.0)
    f["tq_worker_active_tasks"].add_metric(labels, w.get("active", 0))


# --- serving -----------------------------------------------------------------------------------------


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any],
            timeout_s: float = 5.0) -> Callable[[], Any]:
    """A callable for another thread that runs ``fn()`` on ``loop`` and returns its result.

    ``BrokerCollector(on_loop(loop, coordinator.snapshot))`` reads the coordinator's state between
    two callbacks of its loop, never while the loop changes it. Raises TimeoutError when the loop
    does not get to it within ``timeout_s`` (the scrape then fails, and Prometheus records up=0).
    """

    def call() -> Any:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except Exception as exc:
                    fut.set_exception(exc)

        loop.call_soon_threadsafe(run)
        try:
            return fut.result(timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"the event loop did not answer the metrics snapshot in {timeout_s} s") from None

    return call


def metrics_registry(collector: Collector) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) holding only ``collector``.

    Registering checks the collector's names for clashes (through ``describe``)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    return registry


class _MetricsHandler(WSGIRequestHandler):
    """One scrape; quiet (no line per request). ``timeout`` bounds every read and write, the TLS
    handshake included, so a client that stalls holds one thread that long and no more."""

    timeout: float | None = 30.0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _MetricsServer(ThreadingMixIn, WSGIServer):
    """prometheus_client's threading WSGI server, with TLS done our way: each accepted socket is
    wrapped with the context ``tls`` holds *now* (a SIGHUP reload takes effect for the next
    scrape), and the handshake runs in the request's thread, not in the accept loop, so a client
    that never finishes it cannot block the others."""

    daemon_threads = True
    tls: ServerTLS | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self.tls is not None:
            sock = self.tls.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("/metrics request from %s failed", client_address, exc_info=True)


def start_metrics_server(port: int, host: str, collector: Collector, tls: ServerTLS | None = None,
                         timeout: float = 30.0) -> tuple[WSGIServer, int]:
    """Serve /metrics (Prometheus text, or OpenMetrics when asked) on a daemon thread; over TLS
    when ``tls`` is given (shardq/tls.py: client certificates too when it asks for them).

    ``port`` 0 binds any free port; the bound port is returned. Raises OSError when it cannot bind.
    ``timeout``: seconds a request (its TLS handshake included) may stall.
    Stop it with ``stop_metrics_server(server)``.
    """
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]
    server_cls = type("MetricsServer", (_MetricsServer,), {"address_family": family, "tls": tls})
    handler_cls = type("MetricsHandler", (_MetricsHandler,), {"timeout": timeout})
    server = make_server(sockaddr[0], port, make_wsgi_app(metrics_registry(collector)),
                         server_cls, handler_class=handler_cls)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server, server.server_port


def stop_metrics_server(server: WSGIServer) -> None:
    """Stop serving and close the listening socket."""
    server.shutdown()
    server.server_close()
