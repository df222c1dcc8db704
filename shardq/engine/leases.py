"""The lease table: which worker holds which attempt of an in-progress task, and until when.

Rules:
1. A lease is the fencing token: RESULT changes a task only when the lease's
   worker and attempt match. This file keeps the table, the workers and their
   clocks; it never changes a task's status and never reads the store. It tells
   the engine which leases expired, timed out or lost their worker, and the
   engine moves those tasks.
2. A lease holds the task's record, so that RESULT, reclaim and timeout change
   it without reading the store.
3. Three heaps of lazy entries say when to look again: lease expiry, task
   timeout (started + timeout_seconds) and worker liveness (2 x heartbeat). A
   heartbeat extends a lease in place; an entry that comes to the top is checked
   against the lease (same attempt? extended since?) and dropped or pushed again.
   Entries of finished leases stay behind until their time, and the lease heaps
   are rebuilt once those outnumber the live leases.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from shardq.task import Task


@dataclass(slots=True)
class Lease:
    """An in-progress task's lease. It holds the task's record, so that RESULT,
    reclaim and timeout change it without reading the store."""

    worker_id: str
    attempt: int
    expires_ms: int
    deadline_ms: int  # started + timeout_seconds
    task: Task


@dataclass(slots=True)
class Worker:
    worker_id: str
    first_seen_ms: int
    last_seen_ms: int
    hostname: str | None = None
    pid: int | None = None
    types: list[str] | None = None
    concurrency: int | None = None
    cpu_percent: float | None = None
    memory_rss: int | None = None
    memory_percent: float | None = None
    state: str = "running"
    leases: set[bytes] = field(default_factory=set)
    # Leases of this worker revoked by CANCEL, not yet announced in a HEARTBEAT answer
    # (cancelling.py): for workers that do not list ``active``.
    cancelled: set[bytes] = field(default_factory=set)

    def to_wire(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "hostname": self.hostname, "pid": self.pid,
                "types": self.types, "concurrency": self.concurrency,
                "first_seen_ms": self.first_seen_ms, "last_seen_ms": self.last_seen_ms,
                "cpu_percent": self.cpu_percent, "memory_rss": self.memory_rss,
                "memory_percent": self.memory_percent, "state": self.state,
                "active": len(self.leases)}


class LeaseTable:
    """The leases and workers of one shard. ``by_id`` (task id -> Lease) and
    ``workers`` (worker id -> Worker) may be read by the engine; only this class
    changes them."""

    __slots__ = ("lease_ms", "liveness_ms", "by_id", "workers", "lease_heap", "timeout_heap",
                 "worker_heap", "stale_entries")

    def __init__(self, lease_ms: int, heartbeat_ms: int, track_liveness: bool = True) -> None:
        self.lease_ms = lease_ms
        # A worker unheard of this long is lost. None: liveness is decided elsewhere
        # (the coordinator of a multi-process broker, which hears every shard).
        self.liveness_ms: int | None = 2 * heartbeat_ms if track_liveness else None
        self.by_id: dict[bytes, Lease] = {}
        self.workers: dict[str, Worker] = {}
        self.lease_heap: list[tuple[int, bytes, int]] = []  # (expires_ms, id, attempt)
        self.timeout_heap: list[tuple[int, bytes, int]] = []  # (deadline_ms, id, attempt)
        self.worker_heap: list[tuple[int, str]] = []  # (look again at, worker id)
        self.stale_entries = 0  # lease/timeout heap entries of dropped leases

    # -- workers -------------------------------------------------------------

    def touch(self, worker_id: str, now: int) -> Worker:
        """The worker was heard from at ``now``; it is added when new."""
        w = self.workers.get(worker_id)
        if w is None:
            w = self.workers[worker_id] = Worker(worker_id, now, now)
            if self.liveness_ms is not None:
                heapq.heappush(self.worker_heap, (now + self.liveness_ms, worker_id))
        else:
            w.last_seen_ms = now
        return w

    def extend(self, w: Worker, now: int, only: set[bytes] | None = None) -> int:
        """A heartbeat: the leases of ``w`` now expire a lease time from ``now`` -- all of them,
        or with ``only`` (the heartbeat's ``active``) just those the worker says it holds."""
        expires = now + self.lease_ms
        by_id = self.by_id
        for tid in w.leases if only is None else w.leases & only:
            by_id[tid].expires_ms = expires
        return expires

    def remove_worker(self, worker_id: str) -> list[Lease] | None:
        """The worker leaves: remove it and its leases, and return those leases
        (None for a worker not in the table)."""
        w = self.workers.pop(worker_id, None)
        if w is None:
            return None
        out = []
        for tid in list(w.leases):
            lease = self.by_id.pop(tid, None)
            if lease is not None:
                out.append(lease)
        return out

    # -- leases --------------------------------------------------------------

    def grant(self, task: Task, worker_id: str, now: int) -> None:
        """Lease ``task`` (already moved to in_progress, with its new attempt) to ``worker_id``."""
        lease = Lease(worker_id, task.attempt, now + self.lease_ms,
                      now + task.timeout_seconds * 1000, task)
        self.by_id[task.id] = lease
        heapq.heappush(self.lease_heap, (lease.expires_ms, task.id, task.attempt))
        heapq.heappush(self.timeout_heap, (lease.deadline_ms, task.id, task.attempt))
        # Not ``self.workers[worker_id]``: a long-poll CLAIM served later may outlive
        # its worker's 2 x heartbeat liveness, and the worker is gone from the table.
        # (``touch``, inlined for a known worker: this runs once per claimed task.)
        w = self.workers.get(worker_id)
        if w is None:
            w = self.touch(worker_id, now)
        else:
            w.last_seen_ms = now
        w.leases.add(task.id)

    def restore(self, task: Task, worker_id: str, expires_ms: int, deadline_ms: int, now: int) -> None:
        """A lease read back from the store (Engine.reload), with the times it had."""
        lease = Lease(worker_id, task.attempt, expires_ms, deadline_ms, task)
        self.by_id[task.id] = lease
        heapq.heappush(self.lease_heap, (expires_ms, task.id, task.attempt))
        heapq.heappush(self.timeout_heap, (deadline_ms, task.id, task.attempt))
        w = self.workers.get(worker_id)
        if w is None:
            w = self.touch(worker_id, now)
        w.leases.add(task.id)

    def drop(self, raw_id: bytes) -> None:
        """The task's attempt ended (a result, a reclaim, a timeout): forget its lease."""
        lease = self.by_id.pop(raw_id, None)
        if lease is not None:
            w = self.workers.get(lease.worker_id)
            if w is not None:
                w.leases.discard(raw_id)
            # Its heap entries stay behind (lazy deletion) until their time; at
            # high throughput that is millions, so rebuild once they dominate.
            self.stale_entries += 1
            if self.stale_entries > 2 * len(self.by_id) + 10_000:
                self._rebuild_heaps()

    def _rebuild_heaps(self) -> None:
        leases = self.by_id
        self.lease_heap = [(lease.expires_ms, raw, lease.attempt) for raw, lease in leases.items()]
        self.timeout_heap = [(lease.deadline_ms, raw, lease.attempt) for raw, lease in leases.items()]
        heapq.heapify(self.lease_heap)
        heapq.heapify(self.timeout_heap)
        self.stale_entries = 0

    # -- time ----------------------------------------------------------------
    # Each of these yields what is due at ``now`` while the caller acts on it (and
    # may drop the lease) before the next entry is looked at.

    def due(self, now: int) -> bool:
        """Whether any heap has an entry to look at ``now`` (a cheap test, as the tick
        runs every loop turn and mostly finds nothing)."""
        lh, th, wh = self.lease_heap, self.timeout_heap, self.worker_heap
        return bool(lh and lh[0][0] <= now or th and th[0][0] <= now or wh and wh[0][0] <= now)

    def expired(self, now: int) -> Iterator[Lease]:
        """The leases whose time ran out without a heartbeat extending them."""
        lh = self.lease_heap
        while lh and lh[0][0] <= now:
            _, raw, attempt = heapq.heappop(lh)
            lease = self.by_id.get(raw)
            if lease is None or lease.attempt != attempt:
                continue
            if lease.expires_ms > now:  # extended by a heartbeat since this entry
                heapq.heappush(lh, (lease.expires_ms, raw, attempt))
                continue
            yield lease

    def timed_out(self, now: int) -> Iterator[Lease]:
        """The leases whose attempt ran past the task's timeout_seconds."""
        th = self.timeout_heap
        while th and th[0][0] <= now:
            _, raw, attempt = heapq.heappop(th)
            lease = self.by_id.get(raw)
            if lease is None or lease.attempt != attempt:
                continue
            yield lease

    def dead_workers(self, now: int) -> Iterator[Worker]:
        """Workers unheard of for 2 x heartbeat, removed from the table (their
        leases are not: the caller reclaims them)."""
        wh = self.worker_heap
        limit = self.liveness_ms
        if limit is None:
            return
        while wh and wh[0][0] <= now:
            _, wid = heapq.heappop(wh)
            w = self.workers.get(wid)
            if w is None:
                continue
            if w.last_seen_ms + limit > now:
                heapq.heappush(wh, (w.last_seen_ms + limit, wid))
                continue
            del self.workers[wid]
            yield w

    def heads(self) -> list[int]:
        """The times the heaps next need a look (an empty heap has none)."""
        return [h[0][0] for h in (self.lease_heap, self.timeout_heap, self.worker_heap) if h]
