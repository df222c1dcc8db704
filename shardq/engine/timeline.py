"""What each transition writes into a task's history, and the live facts the history and explain
need beside it: heartbeats of running attempts, claims per task type.

`EngineTimeline` is a mixin of `Engine` (engine.py). ``Engine._set_status`` calls ``_note`` for
every status change, after the change and before the record is staged, so the event rides in the
same record write (history.py, rule 1). Heartbeats are not status changes and write nothing: each
running attempt's count and first/last times are kept here in memory and folded into the history
as one event when the attempt ends (a broker restart forgets the count of the attempts running
then, nothing else). ``actor`` is the API key id a request acts for (set by the server around a
SUBMIT, CANCEL or REQUEUE when auth is on), recorded with those events. The ordinary lifecycle
(submit, claim, complete) stores nothing: history.py, rule 1.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from shardq.engine import history
from shardq.engine.deps import Dependencies
from shardq.engine.leases import LeaseTable, Worker
from shardq.engine.ready import ReadyQueue, _ready_key
from shardq.engine.settings import EngineSettings
from shardq.engine.storage import Store
from shardq.task import FAILED, IN_PROGRESS, PENDING, STATUS_NAMES, Task, id_to_str

# explain counts the ready tasks ahead of one in a scan of its type's heap of at most this many
# entries (a few ms; the depth threshold keeps heaps below it by default), so "ahead" stops there.
AHEAD_SCAN_MAX = 200_000
# The window of the claim figures explain uses ("no claim in the last minute", the claim rate).
CLAIM_WINDOW_S = 60
_ENDS_ATTEMPT = frozenset(("complete", "fail_retry", "fail_final", "release", "reclaim_retry",
                           "reclaim_final"))


class EngineTimeline:
    store: Store
    s: EngineSettings
    _leases: LeaseTable
    _ready: ReadyQueue
    _deps: Dependencies

    if TYPE_CHECKING:  # defined by EngineControls (controls.py)
        def control_view(self, task_type: str, now: int | None = None) -> dict[str, Any] | None: ...

    def _init_timeline(self) -> None:
        self.actor: str | None = None
        self._fail_reason: str | None = None  # set by Engine._fail for the transition it makes
        self._beats: dict[bytes, list[int]] = {}  # running task id -> [first_ms, last_ms, count]
        # task type -> deque of [second, claims in that second], the last CLAIM_WINDOW_S seconds
        self._type_claims: dict[str, deque[list[int]]] = {}

    # -- events --------------------------------------------------------------------------

    def _note_submitted(self, task: Task, now: int) -> None:
        """Stored only with an API key to name: the submit time is the record's ``created_ms``."""
        if self.actor:
            history.append(task, ["s", now, self.actor])

    def _note(self, task: Task, event: str, now: int) -> None:
        """The history of transition ``event``, which ``task`` is making: called by
        ``Engine._set_status`` with the new status and fields set, before the worker of the
        ended attempt is cleared. A claim and a completion store nothing (history.py, rule 1),
        unless the attempt had heartbeats; a claim counts toward its type's claim figures."""
        if event == "claim":
            self._count_claim(task.type, now)
            return
        if event == "complete":
            beats = self._beats.pop(task.id, None) if self._beats else None
            if beats is not None:  # the claim then the heartbeats; the completion stays implicit
                self._claimed_event(task)
                history.append(task, ["hb", beats[0], beats[1], beats[2]])
            return
        append = history.append
        if event in _ENDS_ATTEMPT:
            reason, self._fail_reason = self._fail_reason, None
            self._claimed_event(task)
            beats = self._beats.pop(task.id, None)
            if beats is not None:
                append(task, ["hb", beats[0], beats[1], beats[2]])
            if event == "release":
                append(task, ["rl", now, task.attempt])
            elif event.startswith("reclaim") or reason == "timeout":
                append(task, ["rc", now, task.attempt, task.error])
            else:
                append(task, ["f", now, task.attempt, history.clip(task.error)])
            if event == "fail_retry":
                append(task, ["r", now, task.scheduled_ms])
            elif event.endswith("final"):
                why = (f"{task.retry_count} of {task.max_retries} retries used"
                       if task.retry_count >= task.max_retries else "the worker asked not to retry")
                append(task, ["dl", now, why])
        elif event == "cancel":
            append(task, ["x", now, self.actor] if self.actor else ["x", now])
        elif event == "requeue":
            append(task, ["rq", now, self.actor] if self.actor else ["rq", now])
        elif event in ("dependency_failed", "submit_dependency_failed"):
            append(task, ["dl", now, history.clip(task.error)])

    def _claimed_event(self, task: Task) -> None:
        """Store the claim of the attempt that is ending (the fixed fields will describe the
        next attempt instead)."""
        w = self._leases.workers.get(task.worker_id or "")
        history.append(task, ["c", task.started_ms, task.attempt, task.worker_id,
                              w.hostname if w is not None else None])

    def _note_dependencies_met(self, task: Task, last: bytes | None, now: int) -> None:
        """``task`` (pending) no longer waits: its last dependency completed. Not a status
        change, so this is the one history event that stages a record write of its own (only
        tasks with dependencies pay it, once)."""
        key = self.store.index_key(task)
        history.append(task, ["dep", now, last.hex() if last is not None else None])
        self.store.update(task, PENDING, key)

    def _note_beats(self, w: Worker, active: list[bytes] | None, now: int) -> None:
        """A heartbeat of ``w`` extended these leases (all of them, or those in ``active``)."""
        beats = self._beats
        for tid in (w.leases if active is None else w.leases.intersection(active)):
            b = beats.get(tid)
            if b is None:
                beats[tid] = [now, now, 1]
            else:
                b[1] = now
                b[2] += 1

    def _count_claim(self, task_type: str, now: int) -> None:
        second = now // 1000
        window = self._type_claims.get(task_type)
        if window is None:
            window = self._type_claims[task_type] = deque()
        if window and window[-1][0] == second:
            window[-1][1] += 1
            return
        window.append([second, 1])
        while window[0][0] <= second - CLAIM_WINDOW_S:
            window.popleft()

    # -- reads -----------------------------------------------------------------------------

    def claims_of_type(self, task_type: str, now: int) -> tuple[int, int | None]:
        """Claims of ``task_type`` here in the last CLAIM_WINDOW_S seconds, and the time (ms,
        to the second) of the latest one (None: none in the window)."""
        window = self._type_claims.get(task_type)
        floor = now // 1000 - CLAIM_WINDOW_S
        if not window:
            return 0, None
        n = sum(c for s, c in window if s > floor)
        return n, (window[-1][0] * 1000 if window[-1][0] > floor else None)

    def history_of(self, task: Task) -> dict[str, Any]:
        """The task's history in wire form, with the heartbeats of its running attempt."""
        w = self._leases.workers.get(task.worker_id or "")
        return history.to_wire(task, w.hostname if w is not None else None, self._beats.get(task.id))

    def beats_of(self, raw: bytes) -> list[int] | None:
        return self._beats.get(raw)

    def explain_facts(self, raw: bytes, now: int) -> dict[str, Any] | None:
        """What this shard knows about why task ``raw`` runs or not (explain.py's facts), or
        None when it has no such task."""
        task = self.store.get(raw)
        if task is None:
            return None
        facts: dict[str, Any] = {
            "id": id_to_str(raw), "type": task.type, "status": STATUS_NAMES[task.status],
            "shard": self.s.shard, "now_ms": now, "priority": task.priority,
            "created_ms": task.created_ms, "updated_ms": task.updated_ms,
            "scheduled_ms": task.scheduled_ms, "started_ms": task.started_ms, "attempt": task.attempt,
            "retry_count": task.retry_count, "max_retries": task.max_retries, "error": task.error,
            "result_len": task.result_len}
        if task.status in (PENDING, FAILED):
            control = self.control_view(task.type, now)  # paused, capped, rate-limited (controls.py)
            if control is not None:
                facts["control"] = control
        if task.extras and task.extras.get("expires_at_ms") is not None:
            facts["expires_at_ms"] = task.extras["expires_at_ms"]  # expiry (taskopts.py)
        if task.status == IN_PROGRESS:
            lease = self._leases.by_id.get(raw)
            beats = self._beats.get(raw)
            facts.update(worker_id=lease.worker_id if lease is not None else task.worker_id,
                         lease_expires_ms=lease.expires_ms if lease is not None else task.lease_expires_ms,
                         last_heartbeat_ms=beats[1] if beats is not None else None,
                         heartbeats=beats[2] if beats is not None else 0)
        elif task.status == PENDING:
            waiting_on = self._deps.waiting_on
            if raw in self._deps.unmet:
                facts["waiting_on"] = [id_to_str(d) for d in task.depends_on if d in waiting_on]
            elif task.scheduled_ms <= now:
                facts["ahead"] = self._ahead(task)
            facts["claims_last_minute"], facts["last_claim_ms"] = self.claims_of_type(task.type, now)
        return facts

    def _ahead(self, task: Task) -> int:
        """Ready tasks of its type that a CLAIM takes before ``task`` (higher priority, or equal
        and submitted earlier). Entries of tasks that left meanwhile are counted until they reach
        the top of the heap (ready.py, rule 3): "about"."""
        mine = _ready_key(task.priority, task.seq, task.id)
        n = 0
        for scanned, key in enumerate(self._ready.heaps.get(task.type, ())):
            if key < mine:
                n += 1
            if scanned >= AHEAD_SCAN_MAX:
                break
        return n
