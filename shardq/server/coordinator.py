"""The coordinator process: what no single shard can know.

Rules:
1. Never on the path of a SUBMIT, nor of a CLAIM that finds local work. Shards
   send it REPORTs (one-way): their depth and ready task types when those
   change, the workers they heard from, and their stats every REPORT_PERIOD.
2. It pushes STATE to every shard when depths or ready types change: each shard
   adds the others' depths to its own exact one for backpressure, and asks the
   shards that have ready work when its own has none.
3. Worker liveness is global: a worker no shard heard from for 2 x heartbeat
   interval is dead, and every shard is told to reclaim its leases (WORKER_DEAD).
4. It keeps no durable state. Restarted, it rebuilds everything from the
   shards' next reports (each shard sends its full worker table on connect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import uvloop

from shardq.clock import now_ms
from shardq.config import ApiConfig, BrokerConfig, MonitoringConfig
from shardq.errors import ConfigError
from shardq.metrics import BrokerCollector, on_loop, start_metrics_server, stop_metrics_server
from shardq.process import EXIT_BIND, EXIT_CONFIG, start_child
from shardq.protocol.frames import Message, MsgType
from shardq.server.coordinator_controls import CoordinatorControls
from shardq.server.history import RESOLUTIONS, BrokerHistory, record_usage
from shardq.server.mesh import Link, coordinator_path
from shardq.server.worker_control import merge_reported, on_order, push_orders
from shardq.tls import ServerTLS

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger("shardq.coordinator")

WORKER_FIELDS = ("hostname", "pid", "types", "concurrency", "cpu_percent", "memory_rss",
                 "memory_percent", "state")


class Coordinator(CoordinatorControls):
    def __init__(self, broker: BrokerConfig, shards: int) -> None:
        self.host = broker.host  # /metrics listens beside the client port
        self.connection_timeout_s = broker.connection_timeout_ms / 1000
        self.shards = shards
        self.links: dict[int, Link] = {}
        self.reports: dict[int, dict[str, Any]] = {}  # the last stats REPORT of each shard
        self.depths: dict[int, int] = {}
        self.ready: dict[int, dict[str, int]] = {}  # shard -> {type: best ready tier rank}
        self.workers: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, str] = {}  # worker id -> quiet | stop (worker_control.py)
        self.liveness_ms = 2 * broker.heartbeat_interval_ms
        self.started = time.monotonic()
        self.dead_declared = 0
        self._state_dirty = False
        self._init_controls()  # per-type controls: records, slots, rate shares
        self.history = BrokerHistory()  # the dashboard's charts (history.py)
        self.connects: dict[int, int] = {}  # shard -> times it connected: restarts + 1

    # -- messages from shards ---------------------------------------------------

    def on_message(self, link: Link, msg: Message) -> None:
        if msg.type is MsgType.REPORT:
            self._on_report(link, msg.header)
        elif msg.type is MsgType.GET_STATS:
            resolution = msg.header.get("history")
            if resolution in RESOLUTIONS:
                link.answer(msg.rid, self.history.series(resolution))
            elif msg.header.get("usage"):  # each worker's CPU and memory over time (history.py)
                link.answer(msg.rid, {"usage": {wid: w.get("usage") or [] for wid, w in self.workers.items()}})
            else:
                link.answer(msg.rid, self.stats_view())
        elif msg.type is MsgType.WORKER_ORDER:
            answer, changed = on_order(self.orders, self.workers, msg.header)
            link.answer(msg.rid, answer)
            if changed:
                push_orders(self.orders, list(self.links.values()))
        elif msg.rid is not None:
            link.answer(msg.rid, {})

    def _on_report(self, link: Link, report: dict[str, Any]) -> None:
        shard = report.get("shard")
        if type(shard) is not int or not 0 <= shard < self.shards:
            log.error("report with a bad shard %r ignored", shard)
            return
        if self.links.get(shard) is not link:
            self.connects[shard] = self.connects.get(shard, 0) + 1  # a shard (re)started
            self.links[shard] = link
            link.on_lost = lambda lk, i=shard: self._lost(i, lk)
            self._state_dirty = True  # a (re)connected shard needs the others' state
            self.controls_link_new(shard)
            if self.orders:
                push_orders(self.orders, [link])
        if "depth" in report and self.depths.get(shard) != report["depth"]:
            self.depths[shard] = report["depth"]
            self._state_dirty = True
        if "ready" in report and self.ready.get(shard) != report["ready"]:
            self.ready[shard] = report["ready"]
            self._state_dirty = True
        if "stats" in report:
            self.reports[shard] = report["stats"]
        for wid, info in (report.get("workers") or {}).items():
            self._seen(wid, shard, info)
        orders_changed = merge_reported(self.orders, report.get("orders"), self.workers)
        for wid in report.get("gone") or ():
            self.workers.pop(wid, None)
            orders_changed = self.orders.pop(wid, None) is not None or orders_changed
        if orders_changed:
            push_orders(self.orders, list(self.links.values()))
        if ("controls" in report or "usage" in report) and self.on_controls_report(shard, report):
            self._state_dirty = True
        if self._state_dirty:
            self._push_state()

    def _seen(self, wid: str, shard: int, info: dict[str, Any]) -> None:
        w = self.workers.get(wid)
        if w is None:
            w = self.workers[wid] = {"worker_id": wid, "first_seen_ms": info.get("last_seen_ms", now_ms())}
            log.info("worker %s seen on shard %d", wid, shard)
        last = info.get("last_seen_ms", 0)
        if last >= w.get("last_seen_ms", 0):
            w["last_seen_ms"] = last
            w["shard"] = shard
        for key in WORKER_FIELDS:
            if info.get(key) is not None:
                w[key] = info[key]
        record_usage(w, info)

    def _lost(self, shard: int, link: Link) -> None:
        if self.links.get(shard) is link:
            del self.links[shard]
            self.depths.pop(shard, None)
            self.ready.pop(shard, None)
            if shard in self.reports:
                self.reports[shard]["up"] = False
            log.warning("shard %d disconnected", shard)
            self.controls_shard_lost()
            self._push_state()

    # -- pushing to shards --------------------------------------------------------

    def _push_state(self) -> None:
        self._state_dirty = False
        state = {"depths": {str(i): d for i, d in self.depths.items()},
                 "ready": {str(i): r for i, r in self.ready.items() if r}}
        state.update(self.controls_state())
        for link in list(self.links.values()):
            link.send(MsgType.STATE, state)

    def check_workers(self, now: int) -> None:
        """Declare dead the workers no shard heard from for 2 x heartbeat interval."""
        for wid, w in list(self.workers.items()):
            if now - w.get("last_seen_ms", now) > self.liveness_ms:
                del self.workers[wid]
                self.dead_declared += 1
                if self.orders.pop(wid, None) is not None:
                    push_orders(self.orders, list(self.links.values()))
                log.warning("worker %s is dead: no message on any shard for %d ms; reclaiming its leases",
                            wid, now - w["last_seen_ms"])
                for link in list(self.links.values()):
                    link.send(MsgType.WORKER_DEAD, {"worker_id": wid})

    # -- views ---------------------------------------------------------------------

    def stats_view(self) -> dict[str, Any]:
        """What a shard adds to its GET_STATS answer: the others' rows and the workers."""
        return {"shards": {str(i): r for i, r in self.reports.items()},
                "workers": len(self.workers),
                "worker_list": sorted(({**w, "command": self.orders.get(wid)} for wid, w in self.workers.items()),
                                      key=lambda w: w["worker_id"]),
                "uptime_s": int(time.monotonic() - self.started),
                # restarts seen by this coordinator (since it started) per shard
                "restarts": {str(i): n - 1 for i, n in self.connects.items()}}

    def snapshot(self) -> dict[str, Any]:
        """The per-shard reports and the worker registry (metrics.py reads this)."""
        leases: dict[str, int] = {}
        for report in self.reports.values():
            for wid, n in (report.get("leases") or {}).items():
                leases[wid] = leases.get(wid, 0) + n
        return {"shards": {str(i): r for i, r in self.reports.items()},
                "workers": {wid: {**w, "active": leases.get(wid, 0)} for wid, w in self.workers.items()}}

    # -- the process ------------------------------------------------------------------

    async def run(self, run_dir: str, ready: Connection | None, metrics_port: int | None = None,
                  tls: ServerTLS | None = None) -> int:
        loop = asyncio.get_running_loop()
        path = coordinator_path(run_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await loop.create_unix_server(lambda: Link("shard", self.on_message), path)
        metrics = None
        if metrics_port is not None:
            try:
                metrics, metrics_port = start_metrics_server(
                    metrics_port, self.host, BrokerCollector(on_loop(loop, self.snapshot)), tls,
                    timeout=self.connection_timeout_s)
            except OSError as exc:
                log.error("cannot serve /metrics on %s:%s: %s", self.host, metrics_port, exc)
                server.close()
                return EXIT_BIND
            log.info("serving /metrics on %s:%d%s", self.host, metrics_port,
                     " over TLS" if tls is not None else "")
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if tls is not None:
            loop.add_signal_handler(signal.SIGHUP, tls.reload)  # the supervisor forwards SIGHUP
        period = max(0.02, min(0.25, self.liveness_ms / 4000))
        if ready is not None:
            ready.send({"ready": True, "metrics_port": metrics_port})
        log.info("coordinating %d shard(s); workers are dead after %d ms unheard", self.shards,
                 self.liveness_ms)
        next_sample = time.time()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)
            self.check_workers(now_ms())
            t = time.time()
            if t >= next_sample:
                next_sample = max(next_sample + 1.0, t + 0.5)  # no burst of catch-up samples
                self.history.sample(t, self.reports)
        server.close()
        if metrics is not None:
            stop_metrics_server(metrics)
        for link in list(self.links.values()):
            link.close()
        log.info("coordinator stopped: workers declared dead=%d", self.dead_declared)
        return 0


def coordinator_main(broker: BrokerConfig, monitoring: MonitoringConfig, api: ApiConfig, run_dir: str,
                     shards: int, metrics_port: int | None = None, ready: Connection | None = None) -> None:
    """Entry point of the coordinator process (spawned by the supervisor). ``metrics_port``:
    where /metrics is served (0: any free port, reported back on ``ready``; None: off), over
    TLS when ``api.tls_enabled``."""
    start_child("coordinator", monitoring)
    try:
        tls = ServerTLS.from_config(api, alpn=None) if metrics_port is not None else None
    except ConfigError as exc:  # the supervisor checked the files; they changed since
        print(f"shardq serve: coordinator: config error: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_CONFIG)
    os._exit(uvloop.run(Coordinator(broker, shards).run(run_dir, ready, metrics_port, tls)))
