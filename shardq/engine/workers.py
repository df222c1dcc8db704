"""Workers and their leases: HEARTBEAT, register/deregister, a worker lost, leases expiring.

`EngineWorkers` is a mixin of `Engine` (engine.py), like reads.py and maintenance.py. Every
status change still goes through ``Engine._set_status`` / ``Engine._fail``; the lease table
itself is ``leases.LeaseTable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardq.engine.leases import LeaseTable, Worker
from shardq.engine.ready import ReadyQueue
from shardq.task import Task, id_to_str


class EngineWorkers:
    _ready: ReadyQueue
    _leases: LeaseTable

    if TYPE_CHECKING:  # defined by Engine (engine.py)
        def _count(self, name: str, n: int = 1) -> None: ...
        def _set_status(self, task: Task, event: str, now: int, **changes: Any) -> None: ...
        def _serve_waiters(self, now: int) -> None: ...
        def _note_beats(self, w: Worker, active: list[bytes] | None, now: int) -> None: ...
        def _fail(self, task: Task, error: str, now: int, *, backoff: bool, retry: bool = True,
                  reason: str) -> None: ...

    # -- HEARTBEAT / workers ---------------------------------------------------

    def register_worker(self, worker_id: str, info: dict[str, Any], now: int) -> None:
        w = self._leases.touch(worker_id, now)
        for key in ("hostname", "pid", "types", "concurrency"):
            if info.get(key) is not None:
                setattr(w, key, info[key])

    def heartbeat(self, worker_id: str, info: dict[str, Any], active: list[bytes] | None,
                  now: int) -> tuple[int, list[str]]:
        w = self._leases.touch(worker_id, now)
        for key in ("cpu_percent", "memory_rss", "memory_percent", "state"):
            if info.get(key) is not None:
                setattr(w, key, info[key])
        # With `active`, only the leases the worker lists are extended. A lease it does not know
        # of (the CLAIM answer never reached it: its connection broke, or a shard relaying a
        # cross-shard claim died) then expires and is reclaimed, instead of being kept alive by
        # the heartbeats of a worker that will never run it. A lease just granted and not yet
        # listed keeps its first expiry, a full lease away, which the next heartbeat renews.
        expires = self._leases.extend(w, now, None if active is None else set(active))
        self._note_beats(w, active, now)  # summarised into the history (timeline.py)
        lost = [id_to_str(t) for t in (active or ()) if t not in w.leases]
        return expires, lost

    def deregister_worker(self, worker_id: str, now: int) -> int:
        leases = self._leases.remove_worker(worker_id)
        if leases is None:
            return 0
        released = 0
        for lease in leases:
            task = lease.task
            self._set_status(task, "release", now)
            self._ready.enqueue(task, now)
            released += 1
        self._count("released", released)
        self._serve_waiters(now)
        return released

    def worker_lost(self, worker_id: str, now: int) -> int:
        """The coordinator declared the worker dead: reclaim its leases here."""
        leases = self._leases.remove_worker(worker_id)
        if leases is None:
            return 0
        self._count("workers_lost")
        for lease in leases:
            self._count("reclaimed_worker_lost")
            self._fail(lease.task, "worker lost", now, backoff=False, reason="worker_lost")
        self._serve_waiters(now)
        return len(leases)

    def _reclaim(self, task: Task, reason: str, now: int) -> None:
        self._leases.drop(task.id)
        self._count(f"reclaimed_{reason.replace(' ', '_')}")
        self._fail(task, reason, now, backoff=False, reason=reason.replace(" ", "_"))


    def _expire_leases(self, now: int) -> None:
        for lease in self._leases.expired(now):
            self._reclaim(lease.task, "lease expired", now)
        for lease in self._leases.timed_out(now):
            task = lease.task
            self._leases.drop(task.id)
            self._count("reclaimed_timeout")
            self._fail(task, "timeout", now, backoff=True, reason="timeout")

    def _expire_workers(self, now: int) -> None:
        by_id = self._leases.by_id
        for w in self._leases.dead_workers(now):
            self._count("workers_lost")
            for raw in list(w.leases):
                lease = by_id.get(raw)
                if lease is not None:
                    self._reclaim(lease.task, "worker lost", now)
