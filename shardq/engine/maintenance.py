"""Whole-store work outside a single request: rebuilding memory at start (`recover`) and after a
failed write (`reload`: docs/architecture.md, "A full disk"), and the bounded slices of retention and of a bulk REQUEUE.

Rules:
1. This file decides which tasks to touch, never how a status changes: every change goes through
   the Engine's own paths in engine.py (``_set_status``, ``requeue``, ``_dependency_failed``).
2. Retention and bulk requeue do one bounded slice a call (the shard schedules the next, so the
   loop never stalls); recovery scans the live records once (finished ones stay on disk),
   before the shard serves, committing every ``commit_every`` staged changes.

`EngineMaintenance` is a mixin of `Engine` for the reason reads.py gives: the shard calls
``engine.recover(...)`` and ``engine.retention_slice(...)`` on the one engine whose memory they
rebuild. The attributes and methods declared below are the Engine's, named for the type checker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardq.engine import states
from shardq.engine.deps import Dependencies
from shardq.engine.leases import LeaseTable
from shardq.engine.reads import SCAN_SLICE
from shardq.engine.ready import ReadyQueue, _ready_key, _schedule_key
from shardq.engine.settings import EngineSettings
from shardq.engine.storage import Store
from shardq.errors import InvalidState
from shardq.task import (
    CANCELLED,
    COMPLETED,
    DEAD_LETTER,
    FAILED,
    IN_PROGRESS,
    PENDING,
    STATUS_NAMES,
    Task,
    id_to_str,
    tier_of,
)


class EngineMaintenance:
    store: Store
    s: EngineSettings
    pending_by_tier: dict[str, int]
    _ready: ReadyQueue
    _deps: Dependencies
    _leases: LeaseTable
    _seq: int

    if TYPE_CHECKING:  # defined by Engine (engine.py)
        def _count(self, name: str, n: int = 1) -> None: ...
        def _set_status(self, task: Task, event: str, now: int, **changes: Any) -> None: ...
        def _dependency_failed(self, dep: bytes, now: int) -> None: ...
        def requeue(self, raw_id: bytes, now: int) -> Task: ...
        def _insight_reset(self) -> None: ...
        def _insight_loaded(self, task: Task) -> None: ...
        def _controls_recount(self) -> None: ...
        def load_schedules(self, now: int) -> int: ...
        def _recover_options(self, task: Task, schedule: list[int], key_of: Any) -> None: ...
        def _load_unique(self) -> int: ...

    # -- REQUEUE (bulk) -----------------------------------------------------------

    def requeue_slice(self, status: int, task_type: str | None, limit: int, after: bytes | None,
                      now: int, type_ok: Callable[[str], bool] | None = None) -> tuple[int, bytes | None]:
        """Requeue up to ``limit`` tasks of ``status`` after ``after`` (one bounded slice).

        Returns (how many were requeued, where to resume or None at the end)."""
        done = 0
        last = None
        scanned = 0
        for raw, task in self.store.scan_status(status, after, SCAN_SLICE):
            scanned += 1
            last = raw
            if task is None or (task_type is not None and task.type != task_type) or (type_ok is not None and not type_ok(task.type)):
                continue
            try:
                self.requeue(task.id, now)
            except InvalidState:
                continue
            done += 1
            if done >= limit:
                return done, last
        return done, (last if scanned >= SCAN_SLICE else None)

    # -- retention / recovery ------------------------------------------------------

    def retention_slice(self, now: int, max_keys: int = 1000) -> int:
        """Delete completed/cancelled tasks older than the retention; one bounded slice."""
        cutoff = (now - self.s.retention_ms).to_bytes(8, "big")
        removed = 0
        for key in self.store.scan_index("idx_finished", b"", None, max_keys, upper=cutoff):
            task = self.store.get(key[8:])
            if task is not None and task.status in (COMPLETED, CANCELLED):
                self.store.delete(task)
                removed += 1
        self._count("retention_deleted", removed)
        return removed

    def recover(self, now: int, commit_every: int = 10_000) -> dict[str, int]:
        """Rebuild memory from the store after a start. Leases survive: every in_progress
        record is leased again to its worker for the same attempt, expiring a lease time from
        ``now`` (the ``recover`` row of states.py), so a worker that outlives the restart and
        heartbeats completes its task, and one that is gone is reclaimed at expiry."""
        store = self.store
        seen, with_deps, in_progress = self._load_waiting(now)
        unique_keys = self._load_unique()
        restored = 0
        for task in in_progress:
            states.check("recover", task.status)
            self._leases.restore(task, task.worker_id or "", now + self.s.lease_ms,
                                 task.started_ms + task.timeout_seconds * 1000, now)
            restored += 1
        self._controls_recount()
        # Correct the persisted counts to what was scanned *before* any dependent is
        # dead-lettered below: those moves adjust the counts themselves.
        corrected = [STATUS_NAMES[st] for st, ids in seen.items() if store.recount(st, ids)]
        found = {st: len(ids) for st, ids in seen.items()}
        del seen
        for task in with_deps:
            unmet = []
            failed_dep = None
            for dep in task.depends_on:
                if not store.owns(dep):
                    unmet.append(dep)
                    continue
                st = store.status_of(dep)
                if st in (DEAD_LETTER, CANCELLED, None):
                    failed_dep = dep
                    break
                if st != COMPLETED:
                    unmet.append(dep)
            if failed_dep is not None:
                self._set_status(task, "dependency_failed", now,
                                 error=f"dependency failed: {id_to_str(failed_dep)}")
                self._dependency_failed(task.id, now)
            elif unmet:
                self._deps.wait(task.id, unmet)
            else:
                self._ready.enqueue(task, now)
            if store.staged >= commit_every:
                store.commit()
        store.commit()
        self._ready.dirty = bool(self._ready.heaps)
        return {"leases_restored": restored, "pending": found[PENDING], "failed": found[FAILED],
                "dead_letter": found[DEAD_LETTER], "counts_corrected": len(corrected),
                "schedules": self.load_schedules(now),
                **({"unique_keys": unique_keys} if unique_keys else {})}

    def _load_waiting(self, now: int) -> tuple[dict[int, list[bytes]], list[Task], list[Task]]:
        """Rebuild the ready heaps, the schedule heap and pending_by_tier from one scan of the
        live records (reads only). Returns the ids seen per live status, the pending tasks
        with dependencies (the caller sorts them out) and the in_progress tasks."""
        store = self.store
        self.pending_by_tier = dict.fromkeys(self.pending_by_tier, 0)
        by_tier = self.pending_by_tier
        seq = 0
        ready: dict[str, list[int]] = {}  # per type, unordered until restored
        schedule: list[int] = []
        scheduled: set[bytes] = set()
        with_deps: list[Task] = []
        in_progress: list[Task] = []
        seen: dict[int, list[bytes]] = {PENDING: [], IN_PROGRESS: [], FAILED: [], DEAD_LETTER: []}
        decode = Task.decode
        self._insight_reset()
        loaded = self._insight_loaded  # dead-letter groups and per-type figures (insight.py)
        for raw, data in store.iter_live():
            status = data[1]  # the record's status byte (task.py)
            seen[status].append(raw)
            task = decode(raw, data)
            loaded(task)
            if status == DEAD_LETTER:
                continue  # nothing in memory waits for it
            if task.seq > seq:
                seq = task.seq
            if task.extras is not None:
                self._recover_options(task, schedule, _schedule_key)  # taskopts.py: expiry
            if status == IN_PROGRESS:
                in_progress.append(task)
            elif status == FAILED:
                schedule.append(_schedule_key(task.scheduled_ms, task.seq, raw))
            else:
                by_tier[tier_of(task.priority)] += 1
                if task.depends_on:
                    with_deps.append(task)
                elif task.scheduled_ms > now:
                    scheduled.add(raw)
                    schedule.append(_schedule_key(task.scheduled_ms, task.seq, raw))
                else:
                    heap = ready.get(task.type)
                    if heap is None:
                        heap = ready[task.type] = []
                    heap.append(_ready_key(task.priority, task.seq, raw))
        self._ready.restore(ready, schedule, scheduled)
        self._seq = max(self._seq, seq + 1)
        return seen, with_deps, in_progress

    def reload(self, now: int) -> dict[str, int]:
        """Make memory match the store again after a failed commit dropped this turn's writes.

        Reads only (the disk may still refuse writes): the ready and schedule heaps, the
        dependency waits and the leases are rebuilt from the records. Unlike ``recover``, the
        in-progress tasks keep their leases: a lease memory still holds for the same attempt
        keeps its heartbeat-extended expiry; one that only the record knows (memory had
        finished or released it in the failed turn) gets the expiry the record says. Workers
        and waiting claims stay as they are."""
        old = self._leases
        leases = LeaseTable(self.s.lease_ms, self.s.heartbeat_ms, self.s.worker_liveness)
        leases.workers, leases.worker_heap = old.workers, old.worker_heap
        for w in leases.workers.values():
            w.leases = set()
        n_leases = 0
        self._deps = Dependencies()
        seen, with_deps, in_progress = self._load_waiting(now)
        self._load_unique()
        for task in in_progress:
            raw = task.id
            worker_id = task.worker_id or ""
            before = old.by_id.get(raw)
            if before is not None and before.attempt == task.attempt and before.worker_id == worker_id:
                expires, deadline = before.expires_ms, before.deadline_ms
            else:
                expires = task.lease_expires_ms or now + self.s.lease_ms
                deadline = task.started_ms + task.timeout_seconds * 1000
            leases.restore(task, worker_id, expires, deadline, now)
            n_leases += 1
        self._leases = leases
        self._controls_recount()  # restored leases count against caps (controls.py)
        store = self.store
        for task in with_deps:
            unmet = [d for d in task.depends_on if not store.owns(d) or store.status_of(d) != COMPLETED]
            if unmet:
                self._deps.wait(task.id, unmet)
            else:
                self._ready.enqueue(task, now)
        self._ready.dirty = True  # waiting claims may be served from the rebuilt heaps
        self.load_schedules(now)  # the schedules' last ticks as written (engine/schedules.py)
        return {"in_progress": n_leases, "pending": len(seen[PENDING]), "failed": len(seen[FAILED])}
