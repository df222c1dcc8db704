"""A shard service: the engine and its store on one event loop.

Rules:
1. Group commit. Handlers change state through the engine and hand their
   answers to ``reply``; nothing is written to a socket until ``_flush`` has
   committed every mutation of this loop iteration in one RocksDB write.
   Acks never precede the write.
2. One timer. ``engine.tick`` says when it next needs to run; the shard keeps
   one ``call_at`` for that (no fixed-interval polling on the hot path).
3. Background work (WAL fsync, retention, compaction, idle sweep) runs on its
   own timers in bounded slices.
4. This process owns one partition of the task ids (``owner_of(id) == index``)
   and opens only that shard's RocksDB. What it needs from the others goes over
   the mesh (mesh.py, routing.py); what it tells the coordinator goes in REPORTs:
   depth and ready types when they change (at most every REPORT_MIN_GAP_S), the
   workers it heard from, and its stats every STATS_PERIOD_S.
5. A failed write (a full disk) answers every request of its loop turn with a
   retryable Unavailable, and memory is rebuilt from what is on disk
   (``Engine.reload``): nothing is acked that was not written, nothing written
   is forgotten. Until a probe write succeeds again the shard is *unwritable*:
   reads are served, requests that write are refused up front (``check_writable``),
   and the tick does nothing that writes. Below ``persistence.min_free_disk_bytes``
   of free space (checked every DISK_CHECK_PERIOD_S) SUBMITs alone are refused:
   claims, results and cancels go on, and finishing tasks eventually frees space.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from shardq.clock import now_ms
from shardq.engine.engine import Engine, EngineSettings
from shardq.errors import Unavailable
from shardq.metrics import LoopLagProbe, shard_histograms
from shardq.protocol.frames import MAX_FRAME, Message, MsgType
from shardq.server.auth import Auth
from shardq.server.budget import HeapTrimmer, InputBudget, OutputBudget
from shardq.server.controls import ShardControls
from shardq.server.handoff import (
    HandoffReceiver,
)
from shardq.server.mesh import Link, Peers, coordinator_path, open_link
from shardq.server.shard_connections import ShardConnections
from shardq.server.shard_disk import DISK_CHECK_PERIOD_S, ShardDisk
from shardq.server.shard_stats import ShardStats
from shardq.server.worker_control import ShardOrders
from shardq.store.partitioned import PartitionedStore
from shardq.store.rocks import StoreSettings, StoreWriteError
from shardq.task import STATUS_CODES, id_to_str, owner_of

if TYPE_CHECKING:
    from shardq.config import Config
    from shardq.server.session import Session
    from shardq.tls import ServerTLS

SessionFactory = Callable[[bytes], "Session"]  # bytes already read -> a client session

log = logging.getLogger("shardq.shard")

RETENTION_PERIOD_S = 60.0
# Deleting one task is ~8 RocksDB deletes; 200 of them keep a loop turn to a few ms.
RETENTION_SLICE = 200
IDLE_SWEEP_PERIOD_S = 1.0
KEYS_CHECK_PERIOD_S = 1.0  # the keys file's mtime, and keys expiring under open connections
REPORT_PERIOD_S = 0.1  # depth and ready types to the coordinator (the contract allows 250 ms)
REPORT_MIN_GAP_S = 0.01  # a change of ready types is reported this soon, not sooner
STATS_PERIOD_S = 0.5
DEPENDENCY_POLL_S = 0.1  # how often dependencies owned by other shards are looked up
COORDINATOR_RETRY_S = 0.1


def engine_settings(cfg: Config, shards: int, index: int = 0) -> EngineSettings:
    b, p = cfg.broker, cfg.persistence
    return EngineSettings(
        shard=index, shards=shards, worker_liveness=False, lease_ms=b.lease_timeout_ms, heartbeat_ms=b.heartbeat_interval_ms,
        depth_threshold=b.queue_depth_threshold, backoff_base_ms=b.retry_backoff_base_ms,
        backoff_max_ms=b.retry_backoff_max_ms, jitter=b.retry_jitter,
        default_max_retries=b.default_max_retries,
        default_timeout_seconds=b.default_timeout_seconds, max_payload=b.max_payload_bytes,
        max_frame=MAX_FRAME,
        retention_ms=p.completed_retention_s * 1000, dead_retention_ms=p.dead_letter_retention_s * 1000)


def store_settings(cfg: Config) -> StoreSettings:
    p = cfg.persistence
    return StoreSettings(
        sync=p.sync, enable_wal=p.enable_wal, compression=p.compression,
        compaction_style=p.compaction_style, write_buffer_size=p.write_buffer_size,
        max_write_buffer_number=p.max_write_buffer_number,
        level0_file_num_compaction_trigger=p.level0_file_num_compaction_trigger,
        periodic_compaction_seconds=p.periodic_compaction_seconds,
        block_cache_size=p.block_cache_size)


class ShardServer(ShardConnections, ShardDisk, ShardStats, ShardControls):
    """Owns the engine, the store and every session of this process."""

    def __init__(self, cfg: Config, data_dir: str, shards: int, index: int = 0,
                 run_dir: str | None = None) -> None:
        self.cfg = cfg
        self.shards = shards
        self.index = index
        self.run_dir = run_dir
        self.store = PartitionedStore(data_dir, shards, store_settings(cfg), own=index)
        self.engine = Engine(self.store, engine_settings(cfg, shards, index))
        self.peers = Peers(run_dir, index, shards) if run_dir is not None else None
        self.sessions: set[Session] = set()
        self.peer_sessions: set[Session] = set()
        # What the client connections may hold in memory together (budget.py, session.py).
        self.out_budget = OutputBudget(cfg.broker.output_budget_bytes)
        self.in_budget = InputBudget(cfg.broker.input_budget_bytes)
        self.trimmer = HeapTrimmer()
        self.handoff: HandoffReceiver | None = None
        self.auth = Auth(cfg.auth)  # the API keys (server/auth.py); loaded by the shard process
        self.tls: ServerTLS | None = None  # set when api.tls_enabled (tls_accept.py)
        self.tls_refused = 0  # connections that never became a TLS session here
        self._handoff_out: dict[int, socket.socket] = {}
        # The admission slots of the connections handed to this shard (the acceptor admits:
        # acceptor.py); reported to it through ``handoff`` as they come free or move.
        self.slots_held = 0
        self.slots_released = 0
        self.slots_moved = [0] * shards
        self.coordinator: Link | None = None
        self.coordinator_view: dict[str, Any] = {}  # the coordinator's last STATE
        self.others_ready: dict[int, dict[str, int]] = {}  # shard -> {type: best tier rank}
        self._reported_ready: dict[str, int] | None = None
        self._report_at = 0.0
        self._report_soon: asyncio.TimerHandle | None = None
        self.workers_heard: dict[str, dict[str, Any]] = {}  # since the last report
        self.workers_known: dict[str, dict[str, Any]] = {}  # every worker heard directly
        self.workers_gone: list[str] = []
        self.orders = ShardOrders()  # quiet/stop orders, as the coordinator last sent them
        self.remote_claims: set[int] = set()  # ids of waiters with a remote claim in flight
        # Set by the shard process (shard_process.py), which knows the transports and the
        # operations layer: how to serve an adopted connection, and who to tell when another
        # shard reports ready work.
        self.session_factory: SessionFactory | None = None
        self.http_adopt: Callable[[socket.socket], None] | None = None  # the HTTP API, when on
        self.on_others_ready: Callable[[], None] = lambda: None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Metrics (shardq/metrics.py): recorded here, shipped in the stats REPORT.
        self.histograms = shard_histograms()
        self._lag_probe = LoopLagProbe(self.histograms["loop_lag_seconds"])
        self._process = psutil.Process()
        self._refused_seen = 0
        self._refusing = False
        self.started = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._outbox: list[tuple[Session, bytes]] = []
        self._sync_always = cfg.persistence.sync == "always" and cfg.persistence.enable_wal
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._background: list[asyncio.TimerHandle] = []
        self.closing = False
        self._wal_sync_running = False
        self.commits = 0
        self.committed_mutations = 0
        # The disk (rule 5).
        self.writable = True
        self.write_error = ""  # the last failed write's error, for logs and answers
        self.write_errors = 0  # failed commits and probes since start
        self.disk_refused = 0  # SUBMITs refused by the free-space watermark
        self.unwritable_since = 0.0
        self.disk_free_bytes: int | None = None
        self.disk_alarm = False  # free space below persistence.min_free_disk_bytes
        self._probe_timer: asyncio.TimerHandle | None = None
        self.flush_seq = 0  # _flush calls so far
        self.failed_flush_seq = -1  # the last _flush whose write failed
        self._init_shard_controls()  # paused types, caps and rates (controls.py)

    # -- start / stop ----------------------------------------------------------

    def recover(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        summary = self.engine.recover(now_ms())
        self.load_controls()
        summary["seconds"] = self.recovered_s = round(time.perf_counter() - t0, 3)
        self.started_ms = now_ms()
        log.info("recovered %s", " ".join(f"{k}={v}" for k, v in summary.items()))
        return summary

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.out_budget.call_later = self.trimmer.call_later = loop.call_later
        p = self.cfg.persistence
        if p.sync == "interval" and p.enable_wal:
            self._every(p.wal_sync_interval_ms / 1000, self._sync_wal)
        # Sweep every minute, or more often for short retentions (down to 1 s).
        shortest = min(p.completed_retention_s, p.dead_letter_retention_s or p.completed_retention_s)
        self._every(min(RETENTION_PERIOD_S, max(1.0, shortest / 4)), self._retention)
        self._every(float(p.compaction_interval_s), self._compact)
        self._every(IDLE_SWEEP_PERIOD_S, self._sweep_idle)
        if self.cfg.auth.enabled:
            self._every(KEYS_CHECK_PERIOD_S, self.reload_keys)
        self._check_disk()
        self._every(DISK_CHECK_PERIOD_S, self._check_disk)
        self._lag_probe.start(loop)
        if self.run_dir is not None:
            self._every(REPORT_PERIOD_S, self._report)
            self._every(DEPENDENCY_POLL_S, self._poll_remote_dependencies)
            self.spawn(self._keep_coordinator())
        self._after_change()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a coroutine of this shard; kept referenced until it ends."""
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def _every(self, period: float, fn: Callable[[], None]) -> None:
        assert self.loop is not None
        loop = self.loop

        def run() -> None:
            if self.closing:
                return
            try:
                fn()
            except Exception:
                log.exception("background job %s failed", fn.__name__)
            self._background.append(loop.call_later(period, run))
        self._background.append(loop.call_later(period, run))

    def close(self) -> None:
        """Flush what is in hand and close the store (after sessions stopped reading)."""
        self.closing = True
        self._lag_probe.stop()
        for handle in self._background:
            handle.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._probe_timer is not None:
            self._probe_timer.cancel()
        self._flush()
        for task in list(self._tasks):
            task.cancel()
        if self.handoff is not None:
            self.handoff.close()
        for ch in self._handoff_out.values():
            ch.close()
        if self.peers is not None:
            self.peers.close()
        if self.coordinator is not None:
            self.coordinator.close()
        try:
            self.store.close()
        except StoreWriteError as exc:
            log.error("closing the store: %s (what was acknowledged is on disk)", exc)
        log.info("shard closed: %s", " ".join(f"{k}={v}" for k, v in sorted(self.engine.counters.items())))

    def owns(self, raw_id: bytes) -> bool:
        return self.shards == 1 or owner_of(raw_id, self.shards) == self.index

    # -- group commit ------------------------------------------------------------

    def reply(self, session: Session, frame: bytes) -> None:
        self._outbox.append((session, frame))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self.loop is not None:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def mutated(self) -> None:
        """A handler staged writes without a reply yet (e.g. a waiting CLAIM woke others)."""
        self._schedule_flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        self.flush_seq += 1
        self._after_change()
        t0 = time.perf_counter()
        try:
            n = self.store.commit()
        except StoreWriteError as exc:
            n = 0
            self._write_failed(exc)
        if n:
            took = time.perf_counter() - t0
            self.commits += 1
            self.committed_mutations += n
            self.histograms["commit_batch_size"].observe(n)
            self.histograms["wal_write_seconds"].observe(took)
            if self._sync_always:
                self.histograms["wal_fsync_seconds"].observe(took)  # the write includes the fsync
        outbox, self._outbox = self._outbox, []
        if len(outbox) == 1:
            outbox[0][0].send(outbox[0][1])
        else:
            # One write per connection for all its answers of this turn (a SUBMIT pipeline's
            # ACKs, a consumer's RESULT and CLAIM answers): fewer syscalls and per-send work.
            by_receiver: dict[Session, list[bytes]] = {}
            for session, frame in outbox:
                frames = by_receiver.get(session)
                if frames is None:
                    by_receiver[session] = [frame]
                else:
                    frames.append(frame)
            for session, frames in by_receiver.items():
                if len(frames) == 1:
                    session.send(frames[0])  # an HTTP answer (http/api.py Committed) is always one
                else:
                    session.send_all(frames)
        if self.coordinator is not None and (self._ready_changed() or self.controls_changed()):
            self._schedule_report()

    def _after_change(self) -> None:
        """Run what fell due and re-arm the single timer for the next due time."""
        nxt = self.engine.tick(now_ms()) if self.writable else self.engine.tick_without_writes(now_ms())
        if nxt is None or self.loop is None:
            return
        when = self.loop.time() + max(0.0, (nxt - now_ms()) / 1000)
        if when < self._timer_at - 0.001:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self._after_change()
        if self.store.staged or self._outbox:
            self._flush()

    def last_flush_failed(self) -> bool:
        """Whether the latest group commit failed: an answer built before it and sent after it
        (a routed or waiting request's) may tell of writes that were rolled back."""
        return self.failed_flush_seq == self.flush_seq

    # -- background ------------------------------------------------------------------

    def _sync_wal(self) -> None:
        # fsync can take milliseconds; RocksDB lets it run beside the loop's writes.
        assert self.loop is not None
        if not self._wal_sync_running and self.writable:
            self._wal_sync_running = True
            self.loop.run_in_executor(None, self._sync_wal_blocking)

    def _sync_wal_blocking(self) -> None:
        try:
            if not self.closing:
                t0 = time.perf_counter()
                try:
                    synced = self.store.sync_wal()
                except StoreWriteError as exc:  # retried next period; the writes report a full disk
                    log.warning("%s", exc)
                    return
                took = time.perf_counter() - t0
                if synced and self.loop is not None:  # Histogram is the loop thread's
                    self.loop.call_soon_threadsafe(self.histograms["wal_fsync_seconds"].observe, took)
        finally:
            self._wal_sync_running = False

    def _retention(self, removed: int = 0) -> None:
        """Delete expired finished tasks, one small slice per loop turn."""
        if self.closing or self.loop is None or not self.writable:
            return
        n = self.engine.retention_slice(now_ms(), RETENTION_SLICE)
        if n < RETENTION_SLICE:  # dead letters have a retention of their own (engine/insight.py)
            n += self.engine.dead_retention_slice(now_ms(), RETENTION_SLICE - n)
        removed += n
        if n:
            self.mutated()
        if n == RETENTION_SLICE:
            self.loop.call_soon(self._retention, removed)
        elif removed:
            log.info("retention removed %d finished tasks", removed)

    def _compact(self) -> None:
        assert self.loop is not None
        if self.writable:
            self.loop.run_in_executor(None, self._compact_blocking)

    def _compact_blocking(self) -> None:
        try:
            self.store.compact()
        except Exception as exc:  # a full disk: compaction needs room to rewrite files
            log.warning("compaction failed: %s", exc)

    def _sweep_idle(self) -> None:
        limit = self.cfg.broker.connection_timeout_ms / 1000
        now = time.monotonic()
        for session in list(self.sessions):
            session.check_idle(now, limit)

    # -- the coordinator -------------------------------------------------------------------

    async def _keep_coordinator(self) -> None:
        assert self.run_dir is not None
        while not self.closing:
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            try:
                link = await open_link(coordinator_path(self.run_dir), "coordinator", self._on_coordinator,
                                       lambda _lk, f=lost: f.done() or f.set_result(None))
            except Unavailable:
                await asyncio.sleep(COORDINATOR_RETRY_S)
                continue
            self.coordinator = link
            self._reported_ready = None
            self._report(full=True)
            await lost
            self.coordinator = None
            if not self.closing:
                log.warning("lost the coordinator; reconnecting")

    def _on_coordinator(self, link: Link, msg: Message) -> None:
        if msg.type is MsgType.STATE:
            self.coordinator_view = msg.header
            depths = msg.header.get("depths") or {}
            self.engine.remote_depth = sum(d for k, d in depths.items() if int(k) != self.index)
            self.others_ready = {int(k): dict(v) for k, v in (msg.header.get("ready") or {}).items()
                                 if int(k) != self.index}
            self.on_state_controls(msg.header)
            if self.others_ready:
                self.on_others_ready()
        elif msg.type is MsgType.WORKER_ORDERS:
            self.orders.replace(msg.header.get("orders"))
        elif msg.type is MsgType.WORKER_DEAD:
            wid = msg.header.get("worker_id")
            if type(wid) is str:
                self.workers_known.pop(wid, None)
                self.workers_heard.pop(wid, None)
                n = self.engine.worker_lost(wid, now_ms())
                if n:
                    log.warning("worker %s lost: reclaimed %d lease(s)", wid, n)
                self.mutated()

    def worker_heard(self, worker_id: str, info: dict[str, Any] | None = None) -> None:
        """A client connection of this shard brought a message from ``worker_id``."""
        entry = self.workers_known.get(worker_id)
        new = entry is None
        if new:
            entry = self.workers_known[worker_id] = {}
        entry["last_seen_ms"] = now_ms()
        if info:
            entry.update((k, v) for k, v in info.items() if v is not None)
        self.workers_heard[worker_id] = entry
        if new or info:
            self._schedule_report()  # new workers and their details reach the registry at once

    def worker_gone(self, worker_id: str) -> None:
        self.orders.orders.pop(worker_id, None)
        self.workers_known.pop(worker_id, None)
        self.workers_heard.pop(worker_id, None)
        self.workers_gone.append(worker_id)
        self._schedule_report()

    def _ready_changed(self) -> bool:
        return self._reported_ready is None or self._reported_ready != self.engine.ready_types()

    def _schedule_report(self) -> None:
        if self._report_soon is not None or self.loop is None:
            return
        delay = max(0.0, self._report_at + REPORT_MIN_GAP_S - self.loop.time())
        self._report_soon = self.loop.call_later(delay, self._report)

    def flush_report(self) -> None:
        """Send a scheduled report now (before a request that should see it)."""
        if self._report_soon is not None:
            self._report()

    def _note_backpressure(self) -> None:
        """One log line when this shard starts refusing SUBMITs, one when it stops."""
        refused = self.engine.counters.get("queue_full", 0)
        if refused != self._refused_seen and not self._refusing:
            self._refusing = True
            log.warning("QueueFull: refusing SUBMITs (broker depth %d, threshold %d)",
                        self.engine.depth(), self.engine.s.depth_threshold)
        elif refused == self._refused_seen and self._refusing:
            self._refusing = False
            log.info("QueueFull over: accepting SUBMITs again (broker depth %d)", self.engine.depth())
        self._refused_seen = refused

    def _report(self, full: bool = False) -> None:
        self._note_backpressure()
        link = self.coordinator
        if self._report_soon is not None:
            self._report_soon.cancel()
            self._report_soon = None
        if link is None or self.loop is None:
            return
        now = self.loop.time()
        counts = self.store.counts
        ready = self.engine.ready_types()
        report: dict[str, Any] = {"shard": self.index, "depth": counts[0] + counts[3], "ready": ready}
        heard = self.workers_known if full else self.workers_heard
        if heard:
            report["workers"] = heard
        self.workers_heard = {}
        if full and self.orders.orders:
            report["orders"] = self.orders.orders
        if self.workers_gone:
            report["gone"] = self.workers_gone
            self.workers_gone = []
        if full or now - getattr(self, "_stats_at", 0.0) >= STATS_PERIOD_S:
            self._stats_at = now
            report["stats"] = self.stats_row()
        report.update(self.controls_report(full))
        self._reported_ready = ready
        self._report_at = now
        link.send(MsgType.REPORT, report)

    # -- dependencies on other shards' tasks ----------------------------------------------

    def _poll_remote_dependencies(self) -> None:
        if self.closing or self.peers is None or getattr(self, "_polling", False):
            return
        waits = self.engine.remote_waits()
        if waits:
            self._polling = True
            self.spawn(self._resolve_remote(waits))

    async def _resolve_remote(self, deps: list[bytes]) -> None:
        assert self.peers is not None
        try:
            by_owner: dict[int, list[bytes]] = {}
            for d in deps:
                by_owner.setdefault(owner_of(d, self.shards), []).append(d)
            for owner, ids in by_owner.items():
                for start in range(0, len(ids), 1000):
                    chunk = ids[start:start + 1000]
                    try:
                        header, _ = await self.peers.request(owner, MsgType.QUERY_STATUS,
                                                             {"ids": [id_to_str(r) for r in chunk]})
                    except Unavailable:
                        break  # the owner is restarting: ask again next time
                    now = now_ms()
                    for raw, task in zip(chunk, header.get("tasks") or ()):
                        if task is not None and task["status"] in ("completed", "dead_letter", "cancelled"):
                            self.engine.remote_dependency_finished(raw, STATUS_CODES[task["status"]], now)
                    self.mutated()
        finally:
            self._polling = False
