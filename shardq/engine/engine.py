"""One shard's queue logic: the engine that every request and the tick go through.

Rules:
1. Everything that changes a task's status lives here, and goes through
   ``states.check`` (the transition table) and ``Store.update``: in
   ``Engine._set_status``, and nowhere else.
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

Heap entries are lazy: a cancelled or re-scheduled task leaves its old entry
behind, and the entry is checked against the record when it comes to the top.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardq.engine import states
from shardq.engine.deps import Dependencies
from shardq.engine.leases import Lease, LeaseTable, Worker
from shardq.engine.ready import _HEAD_SHIFT, ReadyQueue, _key_id, _ready_key, _schedule_key
from shardq.engine.waiters import ClaimWaiter, Deliver, WaitingClaims
from shardq.errors import BadRequest, InvalidState, NotFound, QueueFull
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD
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

if TYPE_CHECKING:  # the engine is handed a store; it never opens one
    from shardq.store.partitioned import PartitionedStore

# A CLAIM answer carries fewer tasks rather than exceed a frame; this much of
# the frame is kept for the header (each task's JSON is well under 1 KiB).
_CLAIM_HEADER_RESERVE = 1024 * 1024
_TASK_JSON_RESERVE = 1024

# Bounded scans: LIST_TASKS and REQUEUE look at most this many keys per call.
SCAN_SLICE = 2000


@dataclass(frozen=True, slots=True)
class EngineSettings:
    shard: int = 0
    shards: int = 1
    lease_ms: int = 30_000
    heartbeat_ms: int = 15_000
    depth_threshold: int = 100_000
    backoff_base_ms: int = 1_000
    backoff_max_ms: int = 3_600_000
    jitter: float = 0.2
    default_priority: int = 100
    default_max_retries: int = 3
    default_timeout_seconds: int = 300
    max_payload: int = MAX_PAYLOAD
    retention_ms: int = 7 * 24 * 3600 * 1000
    # False in the multi-process broker: a shard hears only some of a worker's
    # messages, so the coordinator declares workers dead (``worker_lost``).
    worker_liveness: bool = True


@dataclass(slots=True)
class TaskSpec:
    """One task of a SUBMIT, validated by protocol.requests."""

    type: str
    payload: bytes
    priority: int | None = None
    delay_ms: int | None = None
    scheduled_ms: int | None = None
    max_retries: int | None = None
    timeout_seconds: int | None = None
    depends_on: tuple[bytes, ...] = ()
    id: bytes | None = None


@dataclass(slots=True)
class ResultItem:
    id: bytes
    attempt: int
    status: str  # completed | failed | released
    result: bytes = b""
    error: str | None = None
    retry: bool = True


class Engine:
    def __init__(self, store: PartitionedStore, settings: EngineSettings, rng: random.Random | None = None) -> None:
        self.store = store
        self.s = settings
        self.rng = rng or random.Random()
        self._ready = ReadyQueue()  # ready heaps per type, the schedule heap
        self._leases = LeaseTable(settings.lease_ms, settings.heartbeat_ms,
                                  settings.worker_liveness)  # leases, workers
        self._deps = Dependencies()  # pending tasks waiting on others
        self._waiters = WaitingClaims()  # long-poll CLAIMs
        self._seq = 0
        self.pending_by_tier = {"high": 0, "normal": 0, "low": 0}
        self.remote_depth = 0  # other shards' depth as last reported
        self._completions = deque([0] * 10, maxlen=10)  # per second, for retry_after
        self._completion_second = 0
        self.counters: dict[str, int] = {}
        self.processing_ms: list[int] = []  # drained by metrics; bounded below

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
        old_sk, old_fk = self.store.index_keys(task)
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
        task.status = new
        task.updated_ms = now
        if new != IN_PROGRESS:
            task.worker_id = None
            task.lease_expires_ms = None
        self.store.update(task, old, old_sk, old_fk)

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
        batch_ids: dict[bytes, int] = {}
        existing: dict[int, bytes] = {}
        for i, spec in enumerate(specs):
            if spec.id is not None:
                if spec.id in batch_ids:
                    raise BadRequest(f"tasks[{i}].id: {id_to_str(spec.id)} appears twice in the batch")
                if self.store.status_of(spec.id) is not None:
                    existing[i] = spec.id
                batch_ids[spec.id] = i
        new_count = len(specs) - len(existing)
        if check_depth:
            self.check_depth(new_count)
        dep_status: dict[bytes, int] = {}
        for i, spec in enumerate(specs):
            if i in existing:
                continue
            for dep in spec.depends_on:
                if dep == spec.id:
                    raise BadRequest(f"tasks[{i}].depends_on: a task cannot depend on itself")
                if dep in batch_ids and batch_ids[dep] not in existing:
                    continue
                if remote_status is not None and dep in remote_status:
                    st = remote_status[dep]
                else:
                    st = self.store.status_of(dep)
                if st is None:
                    raise NotFound(f"tasks[{i}].depends_on: no task {id_to_str(dep)}")
                dep_status[dep] = st
        order = self._batch_order(specs, batch_ids, existing)
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
            failed_dep = next((d for d in spec.depends_on
                               if dep_status.get(d) in (DEAD_LETTER, CANCELLED)), None)
            if failed_dep is not None:
                task.status = states.check("submit_dependency_failed", states.NEW)
                task.error = f"dependency failed: {id_to_str(failed_dep)}"
                self.store.insert(task, spec.payload)
                dep_status[raw_id] = DEAD_LETTER
                self._count("dead_lettered")
                continue
            states.check("submit", states.NEW)
            self.store.insert(task, spec.payload)
            self.pending_by_tier[tier_of(task.priority)] += 1
            dep_status[raw_id] = PENDING
            unmet = [d for d in spec.depends_on if dep_status.get(d) != COMPLETED]
            if unmet:
                self._deps.wait(raw_id, unmet)
            else:
                enqueue(task, now)
        self._count("submitted", new_count)
        self._serve_waiters(now)
        return ids  # type: ignore[return-value]

    @staticmethod
    def _batch_order(specs: list[TaskSpec], batch_ids: dict[bytes, int],
                     existing: dict[int, bytes]) -> list[int]:
        """Positions of the new tasks, dependencies first; a cycle is a BadRequest."""
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

    # -- CLAIM -------------------------------------------------------------

    def claim(self, worker_id: str, max_tasks: int, types: Iterable[str] | None,
              now: int) -> list[tuple[Task, bytes]]:
        """Lease up to ``max_tasks`` ready tasks (highest priority, then FIFO)."""
        self._leases.touch(worker_id, now)
        return self._take(worker_id, max_tasks, frozenset(types) if types is not None else None, now)

    def _take(self, worker_id: str, max_tasks: int, types: frozenset[str] | None,
              now: int) -> list[tuple[Task, bytes]]:
        out: list[tuple[Task, bytes]] = []
        budget = MAX_FRAME - _CLAIM_HEADER_RESERVE
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
            cost = task.payload_len + _TASK_JSON_RESERVE
            if out and cost > budget:
                ready.push_back(task.type, entry)
                break
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
        waiter = ClaimWaiter(worker_id, max_tasks, frozenset(types) if types is not None else None,
                             now + wait_ms, deliver)
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

    @property
    def waiting_claims(self) -> int:
        return self._waiters.waiting()

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
                if current is None:
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
                    self._dependents_ready(children, now)
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

    # -- dependencies --------------------------------------------------------

    def _dependents_ready(self, children: Iterable[bytes], now: int) -> None:
        """Dependents whose last dependency completed: ready (or scheduled) if still pending."""
        for child in children:
            task = self.store.get(child)
            if task is not None and task.status == PENDING:
                self._ready.enqueue(task, now)

    def remote_waits(self) -> list[bytes]:
        """Dependencies owned by another shard that pending tasks here wait on."""
        owns = self.store.owns
        return [d for d in self._deps.waiting_on if not owns(d)]

    def remote_dependency_finished(self, dep: bytes, status: int, now: int) -> None:
        """Another shard's task that tasks here depend on reached ``status``."""
        if status == COMPLETED:
            children = self._deps.completed(dep)
            if children:
                self._dependents_ready(children, now)
                self._serve_waiters(now)
        elif status in (DEAD_LETTER, CANCELLED):
            self._dependency_failed(dep, now)

    def _dependency_failed(self, dep: bytes, now: int) -> None:
        """Cascade: everything waiting on ``dep`` (transitively) goes to dead_letter."""

        def dead_letter(parent: bytes, child: bytes) -> bool:
            task = self.store.get(child)
            if task is None or task.status != PENDING:
                return False
            self._set_status(task, "dependency_failed", now,
                             error=f"dependency failed: {id_to_str(parent)}")
            self._count("dead_lettered")
            return True

        self._deps.cascade(dep, dead_letter)

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

    def ready_types(self) -> dict[str, int]:
        """For each task type with ready work, the tier of its best ready task (0 low, 1 normal,
        2 high): what other shards need to know to send claims here (a hint, may be stale)."""
        return {t: _rank(h[0]) for t, h in self._ready.heaps.items() if h}

    def best_rank(self, types: frozenset[str] | None) -> int:
        """The tier rank of the best ready task of ``types`` here; -1 when none is ready."""
        heaps = self._ready.heaps
        keys = [h[0] for t, h in heaps.items() if h and (types is None or t in types)]
        return _rank(min(keys)) if keys else -1

    def ready_heads(self) -> list[Task]:
        """The next task to be claimed of each type (queue-latency metrics)."""
        out = []
        for heap in self._ready.heaps.values():
            if heap:
                task = self.store.get_in(PENDING, _key_id(heap[0]))
                if task is not None:
                    out.append(task)
        return out

    def waiting(self) -> list[ClaimWaiter]:
        """The long-poll CLAIMs not answered yet, in arrival order."""
        return [w for w in self._waiters.queue if not w.done]

    def workers(self) -> list[Worker]:
        return list(self._leases.workers.values())

    def _reclaim(self, task: Task, reason: str, now: int) -> None:
        self._leases.drop(task.id)
        self._count(f"reclaimed_{reason.replace(' ', '_')}")
        self._fail(task, reason, now, backoff=False, reason=reason.replace(" ", "_"))

    # -- QUERY_STATUS / CANCEL / REQUEUE ---------------------------------------

    def query(self, ids: list[bytes]) -> list[Task | None]:
        out = []
        for raw in ids:
            task = self.store.get(raw)
            if task is not None and task.status == IN_PROGRESS:
                lease = self._leases.by_id.get(raw)
                if lease is not None:
                    task.lease_expires_ms = lease.expires_ms
            out.append(task)
        return out

    def cancel(self, raw_id: bytes, now: int) -> Task:
        task = self.store.get(raw_id)
        if task is None:
            raise NotFound(f"no task {id_to_str(raw_id)}")
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

    def requeue_slice(self, status: int, task_type: str | None, limit: int, after: bytes | None,
                      now: int) -> tuple[int, bytes | None]:
        """Requeue up to ``limit`` tasks of ``status`` after ``after`` (one bounded slice).

        Returns (how many were requeued, where to resume or None at the end)."""
        done = 0
        last = None
        scanned = 0
        for task in self.store.scan_status(status, after, SCAN_SLICE):
            scanned += 1
            last = task.id
            if task_type is not None and task.type != task_type:
                continue
            try:
                self.requeue(task.id, now)
            except InvalidState:
                continue
            done += 1
            if done >= limit:
                return done, last
        return done, (last if scanned >= SCAN_SLICE else None)

    # -- LIST_TASKS ------------------------------------------------------------

    def list_tasks(self, status: int, task_type: str | None, min_priority: int, max_priority: int,
                   limit: int, cursor: str | None) -> tuple[list[Task], str | None]:
        """One page; the order is by task id (see docs/protocol.md). Bounded: looks at
        most SCAN_SLICE keys, so a page may be short with a non-null cursor."""
        after = _decode_cursor(cursor)
        out: list[Task] = []
        last: bytes | None = None
        scanned = 0
        full_range = min_priority == 0 and max_priority == 255
        if task_type is None:
            for task in self.store.scan_status(status, after, SCAN_SLICE):
                scanned += 1
                last = task.id
                if full_range or min_priority <= task.priority <= max_priority:
                    out.append(task)
                    if len(out) >= limit:
                        break
        else:
            prefix = task_type.encode() + b"\x00"
            after_key = prefix + after if after is not None else None
            for key in self.store.scan_index("idx_type", prefix, after_key, SCAN_SLICE):
                scanned += 1
                raw = key[len(prefix):]
                last = raw
                task = self.store.get(raw)
                if task is None or task.status != status:
                    continue
                if full_range or min_priority <= task.priority <= max_priority:
                    out.append(task)
                    if len(out) >= limit:
                        break
        exhausted = len(out) < limit and scanned < SCAN_SLICE
        leases = self._leases.by_id
        for task in out:
            if task.status == IN_PROGRESS and task.id in leases:
                task.lease_expires_ms = leases[task.id].expires_ms
        return out, (None if exhausted or last is None else last.hex())

    # -- GET_STATS --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        c = self.store.counts
        return {
            "shard": self.s.shard,
            **{STATUS_NAMES[i]: c[i] for i in range(6)},
            "scheduled": len(self._ready.scheduled),
            "by_tier": dict(self.pending_by_tier),
            "workers": len(self._leases.workers),
            "waiting_claims": self.waiting_claims,
        }

    # -- time ----------------------------------------------------------------

    def tick(self, now: int) -> int | None:
        """Do what is due at ``now``; return when the next thing falls due."""
        ready = self._ready
        for due, raw in ready.pop_due(now):
            task = self.store.get(raw)
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
        for head in (self._waiters.next_deadline(), ready.next_due()):
            if head is not None:
                heads.append(head)
        return min(heads) if heads else None

    def tick_without_writes(self, now: int) -> int | None:
        """The tick while the store refuses writes: waiting claims still time out (answered
        empty); what would change a record (due retries, expired leases) waits for ``tick``."""
        self._waiters.expire(now)
        return self._waiters.next_deadline()

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
        """Rebuild memory from the store after a start: leases did not survive."""
        store = self.store
        moved = 0
        for raw, data in list(store.iter_records(IN_PROGRESS)):
            task = Task.decode(raw, data)
            self._set_status(task, "recover", now)
            moved += 1
            if store.staged >= commit_every:
                store.commit()
        store.commit()
        # The moves above counted the recovered tasks into pending_by_tier; the scan
        # of pending records below counts every pending task (them included) again.
        counted, seen, with_deps = self._load_waiting(now)
        # Correct the persisted counts to what was scanned *before* any dependent is
        # dead-lettered below: those moves adjust the counts themselves.
        corrected = [STATUS_NAMES[st] for st, per_part in counted.items()
                     if store.recount(st, per_part)]
        # Verify the id -> status index of every task that can still run (a multi-get,
        # ~0.7 us a task); an entry that disagrees with where the record is gets repaired.
        repaired = sum(store.verify_status_index(st, ids) for st, ids in seen.items())
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
        store.commit()
        self._ready.dirty = bool(self._ready.heaps)
        return {"reclaimed_in_progress": moved, "pending": sum(counted[PENDING]),
                "failed": sum(counted[FAILED]), "counts_corrected": len(corrected),
                "index_repaired": repaired}

    def _load_waiting(self, now: int) -> tuple[dict[int, list[int]], dict[int, list[bytes]], list[Task]]:
        """Rebuild the ready heaps, the schedule heap and pending_by_tier from the pending
        and failed records (reads only). Returns the counts per part, the ids seen and the
        pending tasks with dependencies, which the caller sorts out."""
        store = self.store
        self.pending_by_tier = dict.fromkeys(self.pending_by_tier, 0)
        seq = 0
        slot = store.slot
        parts = len(store.parts)
        counted = {PENDING: [0] * parts, FAILED: [0] * parts}
        ready: dict[str, list[int]] = {}  # per type, unordered until restored
        schedule: list[int] = []
        scheduled: set[bytes] = set()
        with_deps: list[Task] = []
        seen: dict[int, list[bytes]] = {PENDING: [], FAILED: []}
        decode = Task.decode
        for raw, data in store.iter_records(PENDING):
            task = decode(raw, data)
            seen[PENDING].append(raw)
            counted[PENDING][slot(raw)] += 1
            if task.seq > seq:
                seq = task.seq
            self.pending_by_tier[tier_of(task.priority)] += 1
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
        for raw, data in store.iter_records(FAILED):
            task = decode(raw, data)
            seen[FAILED].append(raw)
            counted[FAILED][slot(raw)] += 1
            seq = max(seq, task.seq)
            schedule.append(_schedule_key(task.scheduled_ms, task.seq, raw))
        self._ready.restore(ready, schedule, scheduled)
        self._seq = max(self._seq, seq + 1)
        return counted, seen, with_deps

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
        for raw, data in self.store.iter_records(IN_PROGRESS):
            task = Task.decode(raw, data)
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
        self._deps = Dependencies()
        counted, _, with_deps = self._load_waiting(now)
        store = self.store
        for task in with_deps:
            unmet = [d for d in task.depends_on if not store.owns(d) or store.status_of(d) != COMPLETED]
            if unmet:
                self._deps.wait(task.id, unmet)
            else:
                self._ready.enqueue(task, now)
        self._ready.dirty = True  # waiting claims may be served from the rebuilt heaps
        return {"in_progress": n_leases, "pending": sum(counted[PENDING]), "failed": sum(counted[FAILED])}


def _rank(ready_key: int) -> int:
    """0, 1, 2 for the low, normal, high tier of a ready-heap entry's priority."""
    priority = 255 - (ready_key >> _HEAD_SHIFT)
    return 2 if priority >= 200 else 1 if priority >= 100 else 0


def _decode_cursor(cursor: str | None) -> bytes | None:
    if cursor is None:
        return None
    try:
        raw = bytes.fromhex(cursor)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise BadRequest(f"cursor: {cursor!r} is not a cursor this server returned")
    return raw


# ClaimWaiter, Deliver, Lease and Worker live in waiters.py and leases.py; they stay
# importable from here, where the server and the protocol layer import them.
__all__ = ["Engine", "EngineSettings", "TaskSpec", "ResultItem", "ClaimWaiter", "Deliver", "Lease",
           "Worker", "Task", "STATUS_CODES"]
