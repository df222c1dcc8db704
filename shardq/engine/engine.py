"""One shard's queue logic: the engine that every request and the tick go through.

Rules:
1. Every change of a task's status goes through ``states.check`` (the
   transition table) and ``Store.update``: in ``Engine._set_status``, here,
   and nowhere else. The requests that change statuses live in this file and in
   its transition mixins (workers.py: heartbeats, leases expiring, workers lost;
   dependencies.py: what a finished dependency does to its dependents);
   maintenance.py (recover, retention, bulk requeue) only calls into them.
2. The engine knows no sockets, no event loop and no wall clock: every call
   takes ``now`` (epoch ms), and ``tick(now)`` does what is due and returns the
   time it next needs to run (or None). The store is injected; the engine
   stages changes into it, and the shard commits them before it answers.
3. Memory holds only what ordering needs, each part in a module of its own that
   neither reads the store nor changes a status: the ready heaps per task type
   (so a CLAIM with ``types`` never looks at other types) and the schedule heap
   (``ready.py``), the lease table and workers (``leases.py``), dependency waiters
   (``deps.py``) and waiting claims (``waiters.py``). Records are read from the
   store. This file orchestrates them.
4. What only reads (QUERY_STATUS, LIST_TASKS, GET_STATS, ready hints) is in
   ``reads.py``; the whole-store work outside a request (recover at start,
   retention and bulk-requeue slices) in ``maintenance.py``. Both are mixins of
   ``Engine``, so the shard still calls one object. Its settings are in
   ``settings.py``.

Heap entries are lazy: a cancelled or re-scheduled task leaves its old entry
behind, and the entry is checked against the record when it comes to the top.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from shardq.engine import states
from shardq.engine.cancelling import EngineCancelRunning
from shardq.engine.controls import EngineControls
from shardq.engine.dependencies import EngineDependencies
from shardq.engine.deps import Dependencies
from shardq.engine.insight import EngineInsight
from shardq.engine.leases import Lease, LeaseTable, Worker
from shardq.engine.maintenance import EngineMaintenance
from shardq.engine.reads import EngineReads
from shardq.engine.ready import ReadyQueue, _key_id, type_filter
from shardq.engine.schedules import EngineSchedules, Schedule
from shardq.engine.search import EngineSearch
from shardq.engine.settings import EngineSettings
from shardq.engine.storage import Store
from shardq.engine.taskopts import EngineTaskOptions
from shardq.engine.timeline import EngineTimeline
from shardq.engine.waiters import ClaimWaiter, Deliver, WaitingClaims
from shardq.engine.workers import EngineWorkers
from shardq.errors import BadRequest, InvalidState, NotFound, QueueFull
from shardq.specs import ResultItem, TaskSpec
from shardq.task import (
    CANCELLED,
    COMPLETED,
    DEAD_LETTER,
    FAILED,
    IN_PROGRESS,
    PENDING,
    STATUS_CODES,
    STATUS_NAMES,
    Task,
    id_to_str,
    new_ids,
    tier_of,
)

# A CLAIM answer carries fewer tasks rather than exceed a frame; this much of
# the frame is kept for the header (each task's JSON is well under 1 KiB).
_CLAIM_HEADER_RESERVE = 1024 * 1024
_TASK_JSON_RESERVE = 1024


class Engine(EngineReads, EngineMaintenance, EngineWorkers, EngineDependencies, EngineSchedules,
             EngineTaskOptions, EngineCancelRunning, EngineTimeline, EngineInsight, EngineSearch,
             EngineControls):
    """One shard's engine: the one object the shard calls (see rule 4 for its mixins)."""

    def __init__(self, store: Store, settings: EngineSettings, rng: random.Random | None = None) -> None:
        self.store = store
        self.s = settings
        self.rng = rng or random.Random()
        self._ready = ReadyQueue()  # ready heaps per type, the schedule heap
        self._leases = LeaseTable(settings.lease_ms, settings.heartbeat_ms,
                                  settings.worker_liveness)  # leases, workers
        self._deps = Dependencies()  # pending tasks waiting on others
        self._waiters = WaitingClaims()  # long-poll CLAIMs
        self._schedules: dict[str, Schedule] = {}  # periodic schedules (schedules.py)
        self._schedule_heap: list[tuple[int, str]] = []
        self._unique: dict[bytes, bytes] = {}  # unique keys held here (taskopts.py)
        self._seq = 0
        self._init_timeline()  # history and the live facts beside it (timeline.py)
        self.pending_by_tier = {"high": 0, "normal": 0, "low": 0}
        self.remote_depth = 0  # other shards' depth as last reported
        self._completions = deque([0] * 10, maxlen=10)  # per second, for retry_after
        self._completion_second = 0
        self.counters: dict[str, int] = {}
        self.processing_ms: list[int] = []  # drained by metrics; bounded below
        self._insight_reset()  # dead-letter groups and per-type figures (insight.py)
        self._init_controls(open_claims=True)  # paused types, caps, rates (controls.py)

    # -- helpers -----------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def depth(self) -> int:
        """pending + failed of the whole broker, as this shard knows it."""
        c = self.store.counts
        return c[PENDING] + c[FAILED] + self.remote_depth

    def check_depth(self, new_count: int) -> None:
        """QueueFull if ``new_count`` more tasks would take the depth past the threshold."""
        if new_count and self.depth() + new_count > self.s.depth_threshold:
            self._count("queue_full")
            raise QueueFull(
                f"queue depth {self.depth()} + {new_count} would exceed the threshold "
                f"{self.s.depth_threshold}", retry_after_ms=self._retry_after_ms(new_count))

    def backoff_ms(self, retry_count: int) -> int:
        base = min(self.s.backoff_base_ms * (2 ** min(retry_count, 62)), self.s.backoff_max_ms)
        j = self.s.jitter
        return max(0, int(base * self.rng.uniform(1 - j, 1 + j)))

    def _set_status(self, task: Task, event: str, now: int, **changes: Any) -> None:
        """Apply a transition of the table (and ``changes`` to fields) and stage the write.

        The old index keys are read before anything changes, and the record is
        encoded after everything changed: so all field edits go through here."""
        old = task.status
        new = states.check(event, old)
        old_key = self.store.index_key(task)
        self._insight_moved(task, old, new, event, changes, now)  # before the changes (insight.py)
        for name, value in changes.items():
            setattr(task, name, value)
        if old == PENDING:
            # It no longer waits for its time (ready.py) or its dependencies (deps.py).
            # Their sets are edited here rather than through a method each: every
            # claim passes here.
            self.pending_by_tier[tier_of(task.priority)] -= 1
            self._ready.scheduled.discard(task.id)
            self._deps.unmet.pop(task.id, None)
        if new == PENDING:
            self.pending_by_tier[tier_of(task.priority)] += 1
        if self._metered and task.type in self._metered:
            self._gate_moved(task.type, old, new)
        task.status = new
        task.updated_ms = now
        self._note(task, event, now)  # its history rides in this write (timeline.py)
        if new != IN_PROGRESS:
            if new != COMPLETED:  # a completed task's history names the worker (history.py)
                task.worker_id = None
            task.lease_expires_ms = None
        if task.extras is not None:
            self._options_transition(task, old, new, event, now)  # expiry, unique key
        self.store.update(task, old, old_key)

    # -- SUBMIT ------------------------------------------------------------

    def submit(self, specs: list[TaskSpec], now: int, home: int | None = None,
               remote_status: dict[bytes, int | None] | None = None,
               check_depth: bool = True) -> list[bytes]:
        """Store a batch, all or nothing. Returns the ids in the batch's order.

        New ids are made in the partition of shard ``home`` (default: this shard),
        so a batch without client ids lands in one shard's store. ``remote_status``
        gives the status of dependencies another shard owns, as the shard that
        received the SUBMIT looked them up (None: unknown there -> NotFound).
        ``check_depth`` is False for a part of a batch whose depth was checked
        by the shard that received it."""
        if remote_status:
            status_of = lambda raw: remote_status[raw] if raw in remote_status else self.store.status_of(raw)  # noqa: E731
        else:
            status_of = self.store.status_of
        existing, dep_status, order = self.check_batch(specs, status_of, check_depth)
        new_count = len(specs) - len(existing)
        ids: list[bytes | None] = [existing.get(i) for i in range(len(specs))]
        fresh = iter(new_ids(new_count, self.s.shard if home is None else home, self.s.shards))
        base_seq = self._seq
        self._seq += len(specs)
        enqueue = self._ready.enqueue
        for i in order:
            spec = specs[i]
            raw_id = spec.id if spec.id is not None else next(fresh)
            ids[i] = raw_id
            scheduled = (spec.scheduled_ms if spec.scheduled_ms is not None
                         else now + (spec.delay_ms or 0))
            task = Task(raw_id, spec.type,
                        self.s.default_priority if spec.priority is None else spec.priority,
                        PENDING, now, scheduled, base_seq + i,
                        self.s.default_max_retries if spec.max_retries is None else spec.max_retries,
                        self.s.default_timeout_seconds if spec.timeout_seconds is None else spec.timeout_seconds,
                        len(spec.payload), spec.depends_on)
            if spec.options is not None:
                self._options_at_submit(task, spec.options, now)  # taskopts.py
            failed_dep = next((d for d in spec.depends_on if dep_status.get(d) in (DEAD_LETTER, CANCELLED)),
                              None) if spec.depends_on else None
            if failed_dep is not None:
                task.status = states.check("submit_dependency_failed", states.NEW)
                task.error = f"dependency failed: {id_to_str(failed_dep)}"
                self._note_submitted(task, now)
                self._note(task, "submit_dependency_failed", now)
                self.store.insert(task, spec.payload)
                self._insight_inserted(task)
                dep_status[raw_id] = DEAD_LETTER
                self._count("dead_lettered")
                continue
            states.check("submit", states.NEW)
            self._note_submitted(task, now)
            self.store.insert(task, spec.payload)
            self._insight_inserted(task)
            self.pending_by_tier[tier_of(task.priority)] += 1
            dep_status[raw_id] = PENDING
            if spec.depends_on and (unmet := [d for d in spec.depends_on if dep_status.get(d) != COMPLETED]):
                self._deps.wait(raw_id, unmet)
            else:
                enqueue(task, now)
        self._count("submitted", new_count)
        self._serve_waiters(now)
        return ids  # type: ignore[return-value]

    def check_batch(self, specs: list[TaskSpec], status_of: Callable[[bytes], int | None],
                    check_depth: bool = True) -> tuple[dict[int, bytes], dict[bytes, int], list[int]]:
        """Every rule that can refuse a SUBMIT batch, for the whole batch; nothing is staged.

        ``status_of(id)`` is the status of a task (None: there is none), wherever it lives:
        the batch's client ids and its dependencies outside the batch are asked. Raises
        BadRequest (an id twice, a task depending on itself, a cycle), QueueFull (depth), or
        NotFound (an unknown dependency). A client id that exists is no refusal: that task is
        left as it is (idempotent submit) and its dependencies are not checked. Returns the
        existing tasks by position, the status of each dependency outside the batch's new
        tasks, and the new tasks' positions in the order to store them (dependencies first).
        A batch split across shards is checked here as a whole by the shard that received it
        (server/routing.py) before any owner stores its part."""
        batch_ids: dict[bytes, int] = {}
        existing: dict[int, bytes] = {}
        for i, spec in enumerate(specs):
            if spec.id is not None:
                if spec.id in batch_ids:
                    raise BadRequest(f"tasks[{i}].id: {id_to_str(spec.id)} appears twice in the batch")
                if status_of(spec.id) is not None:
                    existing[i] = spec.id
                batch_ids[spec.id] = i
        if check_depth:
            self.check_depth(len(specs) - len(existing))
        dep_status: dict[bytes, int] = {}
        for i, spec in enumerate(specs):
            if i in existing:
                continue
            for dep in spec.depends_on:
                if dep == spec.id:
                    raise BadRequest(f"tasks[{i}].depends_on: a task cannot depend on itself")
                if dep in batch_ids and batch_ids[dep] not in existing:
                    continue
                st = status_of(dep)
                if st is None:
                    raise NotFound(f"tasks[{i}].depends_on: no task {id_to_str(dep)}")
                dep_status[dep] = st
        return existing, dep_status, self._batch_order(specs, batch_ids, existing)

    @staticmethod
    def _batch_order(specs: list[TaskSpec], batch_ids: dict[bytes, int],
                     existing: dict[int, bytes]) -> list[int]:
        """Positions of the new tasks, dependencies first; a cycle is a BadRequest."""
        if len(specs) == 1:  # one task: nothing in the batch to order it after
            return [] if existing else [0]
        order: list[int] = []
        state = [0] * len(specs)  # 0 new, 1 visiting, 2 done
        for start in range(len(specs)):
            if start in existing or state[start]:
                continue
            stack = [(start, iter(specs[start].depends_on))]
            state[start] = 1
            while stack:
                node, deps = stack[-1]
                for dep in deps:
                    j = batch_ids.get(dep)
                    if j is None or j in existing or state[j] == 2:
                        continue
                    if state[j] == 1:
                        raise BadRequest(f"tasks[{node}].depends_on: dependency cycle inside the batch "
                                         f"through {id_to_str(dep)}")
                    state[j] = 1
                    stack.append((j, iter(specs[j].depends_on)))
                    break
                else:
                    state[node] = 2
                    order.append(node)
                    stack.pop()
        return order

    def _retry_after_ms(self, overflow: int) -> int:
        rate = sum(self._completions) / len(self._completions)
        if rate <= 0:
            return 1000
        return int(min(60_000, max(100, overflow / rate * 1000)))

    # -- CLAIM (``types``: None, literal types, or a filter: ready.type_filter) -----------

    def claim(self, worker_id: str, max_tasks: int, types: Iterable[str] | None,
              now: int) -> list[tuple[Task, bytes]]:
        """Lease up to ``max_tasks`` ready tasks (highest priority, then FIFO)."""
        self._leases.touch(worker_id, now)
        if self._rate_wake is not None and self._rate_wake <= now:
            self._controls_tick(now)  # a rate-limited type got its next token
        return self._take(worker_id, max_tasks, type_filter(types), now)

    def _take(self, worker_id: str, max_tasks: int, types: frozenset[str] | None,
              now: int) -> list[tuple[Task, bytes]]:
        out: list[tuple[Task, bytes]] = []
        if not self.claims_open:
            return out  # controls not known yet (controls.py rule 4)
        metered = self._metered
        budget = self.s.max_frame - _CLAIM_HEADER_RESERVE
        ready = self._ready
        pop_best = ready.pop_best
        grant = self._leases.grant
        set_status = self._set_status
        store = self.store
        lease_ms = self.s.lease_ms
        while len(out) < max_tasks:
            entry = pop_best(types)
            if entry is None:
                break
            task = store.get_in(PENDING, _key_id(entry))
            if task is None:
                continue  # stale entry: cancelled or already moved
            if task.extras is not None and self._expire_if_due(task, now):
                continue  # not started by its expiry: not run (taskopts.py)
            cost = task.payload_len + _TASK_JSON_RESERVE
            if out and cost > budget:
                ready.push_back(task.type, entry)
                break
            if metered and task.type in metered and not self._admit(task.type, now):
                ready.push_back(task.type, entry)  # the type is blocked now: held
                continue
            budget -= cost
            # The lease: in_progress with the next attempt, then the lease table's entry.
            set_status(task, "claim", now, attempt=task.attempt + 1, worker_id=worker_id,
                       started_ms=now, lease_expires_ms=now + lease_ms)
            grant(task, worker_id, now)
            out.append((task, store.payload_of(task)))
        if out:
            self._count("claimed", len(out))
        return out

    def wait_for_claim(self, worker_id: str, max_tasks: int, types: Iterable[str] | None,
                       wait_ms: int, now: int, deliver: Deliver) -> ClaimWaiter | None:
        """CLAIM with ``wait_ms``: deliver at once if anything is ready, else on the
        first ready task or at the deadline (with an empty list). Returns the waiter
        so that a closed connection can cancel it."""
        got = self.claim(worker_id, max_tasks, types, now)
        if got or wait_ms <= 0:
            deliver(got)
            return None
        waiter = ClaimWaiter(worker_id, max_tasks, type_filter(types), now + wait_ms, deliver)
        self._waiters.add(waiter)
        return waiter

    def _serve_waiters(self, now: int) -> None:
        ready = self._ready
        if not ready.dirty:
            return
        ready.dirty = False

        def take(w: ClaimWaiter) -> list[tuple[Task, bytes]]:
            got = self._take(w.worker_id, w.max, w.types, now)
            if got:
                self._leases.touch(w.worker_id, now)
            return got

        self._waiters.serve(ready.heaps, take)

    # -- RESULT ------------------------------------------------------------

    def result(self, worker_id: str, items: list[ResultItem], now: int) -> list[dict[str, Any]]:
        leases = self._leases
        leases.touch(worker_id, now)
        lease_of = leases.by_id.get
        drop = leases.drop
        completed = self._deps.completed
        out: list[dict[str, Any]] = []
        for item in items:
            sid = id_to_str(item.id)
            lease = lease_of(item.id)
            if lease is None or lease.worker_id != worker_id or lease.attempt != item.attempt:
                current = lease.task if lease is not None else self.store.get(item.id)
                late = None if current is None else self.late_result(worker_id, item, current)
                if late is not None:
                    out.append(late)
                elif current is None:
                    out.append({"id": sid, "error": {"code": "NotFound", "message": f"no task {sid}"}})
                else:
                    out.append({"id": sid, "error": {"code": "LeaseLost", "message": (
                        f"{worker_id} does not hold attempt {item.attempt} of {sid} (task is "
                        f"{STATUS_NAMES[current.status]}, attempt {current.attempt})")}})
                continue
            task = lease.task
            if item.status == "completed" and len(item.result) > self.s.max_payload:
                out.append({"id": sid, "error": {"code": "TooLarge", "message": (
                    f"result of {sid} is {len(item.result)} bytes; the limit is {self.s.max_payload}")}})
                continue
            drop(task.id)
            self.processing_ms.append(now - task.started_ms)
            if len(self.processing_ms) > 100_000:
                del self.processing_ms[:50_000]
            if item.status == "completed":
                self._set_status(task, "complete", now, result_len=len(item.result), error=None,
                                 inline_payload=None)
                if item.result:
                    self.store.put_result(task.id, item.result)
                self._count("completed")
                self._note_completion(now)
                children = completed(task.id)
                if children:
                    self._dependents_ready(children, now, task.id)
            elif item.status == "failed":
                self._fail(task, item.error or "", now, backoff=True, retry=item.retry,
                           reason="failed")
            else:
                self._set_status(task, "release", now)
                self._ready.enqueue(task, now)
                self._count("released")
            out.append({"id": sid, "status": STATUS_NAMES[task.status]})
        self._serve_waiters(now)
        return out

    def _note_completion(self, now: int) -> None:
        second = now // 1000
        if second != self._completion_second:
            gap = min(second - self._completion_second, 10)
            for _ in range(gap):
                self._completions.append(0)
            self._completion_second = second
        self._completions[-1] += 1

    def _fail(self, task: Task, error: str, now: int, *, backoff: bool, retry: bool = True,
              reason: str) -> None:
        """A failed execution: retry (with backoff, or at once for a reclaim) or dead-letter."""
        self._fail_reason = reason  # for its history event (timeline.py)
        if retry and task.retry_count < task.max_retries:
            if backoff:
                self._set_status(task, "fail_retry", now, error=error,
                                 scheduled_ms=now + self.backoff_ms(task.retry_count),
                                 retry_count=task.retry_count + 1)
                self._ready.schedule_retry(task)
            else:
                self._set_status(task, "reclaim_retry", now, error=error, scheduled_ms=now,
                                 retry_count=task.retry_count + 1)
                self._ready.enqueue(task, now)
            self._count("retried")
        else:
            self._set_status(task, "fail_final" if backoff else "reclaim_final", now, error=error)
            self._count("dead_lettered")
            self._dependency_failed(task.id, now)
        self._count(f"failures_{reason}")

    # -- CANCEL / REQUEUE -------------------------------------------------------

    def cancel(self, raw_id: bytes, now: int) -> Task:
        task = self.store.get(raw_id)
        if task is None:
            raise NotFound(f"no task {id_to_str(raw_id)}")
        if task.status == IN_PROGRESS:
            self._cancel_running(task, now)
        else:
            self._set_status(task, "cancel", now)
        self._count("cancelled")
        self._dependency_failed(raw_id, now)
        return task

    def requeue(self, raw_id: bytes, now: int) -> Task:
        task = self.store.get(raw_id)
        if task is None:
            raise NotFound(f"no task {id_to_str(raw_id)}")
        if task.status not in (DEAD_LETTER, FAILED):
            raise InvalidState(f"cannot requeue a task that is {STATUS_NAMES[task.status]}")
        unmet = []
        for dep in task.depends_on:
            if not self.store.owns(dep):
                unmet.append(dep)  # another shard's: resolved by remote_dependency_finished
                continue
            st = self.store.status_of(dep)
            if st in (DEAD_LETTER, CANCELLED) or st is None:
                raise InvalidState(f"task {id_to_str(raw_id)} depends on {id_to_str(dep)}, which is "
                                   f"{'gone' if st is None else STATUS_NAMES[st]}; requeue that first")
            if st != COMPLETED:
                unmet.append(dep)
        self._set_status(task, "requeue", now, retry_count=0, scheduled_ms=now, error=None)
        if unmet:
            self._deps.wait(raw_id, unmet)
        else:
            self._ready.enqueue(task, now)
        self._count("requeued")
        self._serve_waiters(now)
        return task

    # -- time ----------------------------------------------------------------

    def tick(self, now: int) -> int | None:
        """Do what is due at ``now``; return when the next thing falls due."""
        ready = self._ready
        rate_wake = self._controls_tick(now) if self._rate_wake is not None else None
        next_schedule = self.fire_schedules(now) if self._schedule_heap else None
        for due, raw in ready.pop_due(now):
            task = self.store.get(raw)
            if task is not None and task.extras is not None and self._expire_if_due(task, now):
                continue
            if task is None or task.scheduled_ms != due:
                continue
            if task.status == FAILED:
                self._set_status(task, "retry_due", now)
                ready.enqueue(task, now)
            elif task.status == PENDING:
                ready.wake(task, now)
        if self._leases.due(now):
            self._expire_leases(now)
            self._expire_workers(now)
        self._serve_waiters(now)
        self._waiters.expire(now)
        heads = self._leases.heads()
        for head in (self._waiters.next_deadline(), ready.next_due(), next_schedule, rate_wake):
            if head is not None:
                heads.append(head)
        return min(heads) if heads else None

    def tick_without_writes(self, now: int) -> int | None:
        """The tick while the store refuses writes: waiting claims still time out (answered
        empty); what would change a record (due retries, expired leases) waits for ``tick``."""
        self._waiters.expire(now)
        return self._waiters.next_deadline()


# ClaimWaiter, Deliver, Lease and Worker live in waiters.py and leases.py, TaskSpec and
# ResultItem in specs.py; they stay importable from here, where the server imports them.
__all__ = ["Engine", "EngineSettings", "TaskSpec", "ResultItem", "ClaimWaiter", "Deliver", "Lease",
           "Worker", "Task", "STATUS_CODES"]

