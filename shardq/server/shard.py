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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psutil

from shardq.engine.engine import Engine, EngineSettings
from shardq.store.partitioned import PartitionedStore
from shardq.store.rocks import StoreSettings

if TYPE_CHECKING:
    from shardq.config import Config
    from shardq.server.session import Session

log = logging.getLogger("shardq.shard")

RETENTION_PERIOD_S = 60.0
# Deleting one task is ~8 RocksDB deletes; 200 of them keep a loop turn to a few ms.
RETENTION_SLICE = 200
IDLE_SWEEP_PERIOD_S = 1.0


def now_ms() -> int:
    return int(time.time() * 1000)


def engine_settings(cfg: Config, shards: int) -> EngineSettings:
    b, p = cfg.broker, cfg.persistence
    return EngineSettings(
        shard=0, shards=shards, lease_ms=b.lease_timeout_ms, heartbeat_ms=b.heartbeat_interval_ms,
        depth_threshold=b.queue_depth_threshold, backoff_base_ms=b.retry_backoff_base_ms,
        backoff_max_ms=b.retry_backoff_max_ms, jitter=b.retry_jitter,
        default_max_retries=b.default_max_retries,
        default_timeout_seconds=b.default_timeout_seconds, max_payload=b.max_payload_bytes,
        retention_ms=p.completed_retention_s * 1000)


def store_settings(cfg: Config) -> StoreSettings:
    p = cfg.persistence
    return StoreSettings(
        sync=p.sync, enable_wal=p.enable_wal, compression=p.compression,
        compaction_style=p.compaction_style, write_buffer_size=p.write_buffer_size,
        max_write_buffer_number=p.max_write_buffer_number,
        level0_file_num_compaction_trigger=p.level0_file_num_compaction_trigger,
        periodic_compaction_seconds=p.periodic_compaction_seconds,
        block_cache_size=p.block_cache_size)


class ShardServer:
    """Owns the engine, the store and every session of this process."""

    def __init__(self, cfg: Config, data_dir: str, shards: int) -> None:
        self.cfg = cfg
        self.shards = shards
        self.store = PartitionedStore(data_dir, shards, store_settings(cfg))
        self.engine = Engine(self.store, engine_settings(cfg, shards))
        self.sessions: set[Session] = set()
        self.started = time.monotonic()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._outbox: list[tuple[Session, bytes]] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._background: list[asyncio.TimerHandle] = []
        self._next_home = 0
        self.closing = False
        self._wal_sync_running = False
        self.commits = 0
        self.committed_mutations = 0

    # -- start / stop ----------------------------------------------------------

    def recover(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        summary = self.engine.recover(now_ms())
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        log.info("recovered %s", " ".join(f"{k}={v}" for k, v in summary.items()))
        return summary

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        p = self.cfg.persistence
        if p.sync == "interval" and p.enable_wal:
            self._every(p.wal_sync_interval_ms / 1000, self._sync_wal)
        # Sweep every minute, or more often for short retentions (down to 1 s).
        self._every(min(RETENTION_PERIOD_S, max(1.0, p.completed_retention_s / 4)), self._retention)
        self._every(float(p.compaction_interval_s), self._compact)
        self._every(IDLE_SWEEP_PERIOD_S, self._sweep_idle)
        self._after_change()

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
        for handle in self._background:
            handle.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self._flush()
        self.store.close()
        log.info("shard closed: %s", " ".join(f"{k}={v}" for k, v in sorted(self.engine.counters.items())))

    def next_home(self) -> int:
        """The partition a new connection's un-id'd SUBMITs land in (round robin)."""
        home = self._next_home
        self._next_home = (home + 1) % self.shards
        return home

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
        self._after_change()
        n = self.store.commit()
        if n:
            self.commits += 1
            self.committed_mutations += n
        outbox, self._outbox = self._outbox, []
        for session, frame in outbox:
            session.send(frame)

    def _after_change(self) -> None:
        """Run what fell due and re-arm the single timer for the next due time."""
        nxt = self.engine.tick(now_ms())
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

    # -- background ------------------------------------------------------------------

    def _sync_wal(self) -> None:
        # fsync can take milliseconds; RocksDB lets it run beside the loop's writes.
        assert self.loop is not None
        if not self._wal_sync_running:
            self._wal_sync_running = True
            self.loop.run_in_executor(None, self._sync_wal_blocking)

    def _sync_wal_blocking(self) -> None:
        try:
            if not self.closing:
                self.store.sync_wal()
        finally:
            self._wal_sync_running = False

    def _retention(self, removed: int = 0) -> None:
        """Delete expired finished tasks, one small slice per loop turn."""
        if self.closing or self.loop is None:
            return
        n = self.engine.retention_slice(now_ms(), RETENTION_SLICE)
        removed += n
        if n:
            self.mutated()
        if n == RETENTION_SLICE:
            self.loop.call_soon(self._retention, removed)
        elif removed:
            log.info("retention removed %d finished tasks", removed)

    def _compact(self) -> None:
        assert self.loop is not None
        self.loop.run_in_executor(None, self.store.compact)

    def _sweep_idle(self) -> None:
        limit = self.cfg.broker.connection_timeout_ms / 1000
        now = time.monotonic()
        for session in list(self.sessions):
            session.check_idle(now, limit)

    # -- stats -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        e = self.engine.stats()
        totals = {k: e[k] for k in ("pending", "in_progress", "completed", "failed", "dead_letter",
                                     "cancelled", "scheduled", "by_tier")}
        rss = _rss()
        per_shard = []
        for i, part in enumerate(self.store.parts):
            row: dict[str, Any] = {"shard": i}
            row.update({name: part.counts[code] for code, name in enumerate(
                ("pending", "in_progress", "completed", "failed", "dead_letter", "cancelled"))})
            row["connections"] = sum(1 for s in self.sessions if s.home == i)
            row["rss"] = rss  # shards share this process until the multi-process server
            per_shard.append(row)
        return {"totals": totals, "workers": e["workers"], "connections": len(self.sessions),
                "shards": per_shard, "uptime_s": int(time.monotonic() - self.started)}


def _rss() -> int:
    return psutil.Process().memory_info().rss
