"""Cancelling a running task: the lease is revoked at once, its worker is told at its next
HEARTBEAT, and a late RESULT of that attempt is answered with the final status.

`EngineCancelRunning` is a mixin of `Engine` (engine.py), like workers.py. The status change
itself goes through ``Engine._set_status`` (transition ``cancel_running`` of states.py).

Rules (docs/protocol.md, "Cancelling a running task"):
1. CANCEL of an ``in_progress`` task makes it ``cancelled`` in the same group commit as any other
   status change, and drops its lease: fencing stays exact, since no attempt of a task that is not
   ``in_progress`` can ever complete, fail or release it.
2. The worker that held the lease learns it from the HEARTBEAT answer's ``cancelled``: the ids of
   its ``active`` list that are cancelled here (read from the record, so it holds across a restart
   of this shard), or, for a worker that sends no ``active``, the leases revoked since its last
   HEARTBEAT (``Worker.cancelled``, in memory: each is announced once).
3. A RESULT for exactly the attempt that was cancelled changes nothing and is answered
   ``{"id", "status": "cancelled"}``: the worker learns the final status instead of an opaque
   LeaseLost. Any other stale RESULT is still LeaseLost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardq.engine.leases import LeaseTable
from shardq.specs import ResultItem
from shardq.task import CANCELLED, Task, id_to_str

if TYPE_CHECKING:
    from shardq.engine.storage import Store


class EngineCancelRunning:
    _leases: LeaseTable
    store: Store

    if TYPE_CHECKING:  # defined by Engine (engine.py)
        def _count(self, name: str, n: int = 1) -> None: ...
        def _set_status(self, task: Task, event: str, now: int, **changes: Any) -> None: ...

    def _cancel_running(self, task: Task, now: int) -> None:
        """CANCEL of an in_progress task (rule 1); the caller finishes the cancel (dependents)."""
        lease = self._leases.by_id.get(task.id)
        if lease is not None:
            task = lease.task  # the lease's record is the one every later change reads
            w = self._leases.workers.get(lease.worker_id)
            self._leases.drop(task.id)
            if w is not None:
                w.cancelled.add(task.id)
        self._set_status(task, "cancel_running", now, error="cancelled while running")
        self._count("cancelled_running")

    def cancel_notices(self, worker_id: str, active: list[bytes] | None) -> list[str]:
        """The ids the HEARTBEAT of ``worker_id`` must stop (rule 2), in no particular order."""
        w = self._leases.workers.get(worker_id)
        out: set[bytes] = set()
        if w is not None and w.cancelled:
            if active is None:
                out = w.cancelled
            w.cancelled = set()
        if active:
            held = w.leases if w is not None else set()
            status_of = self.store.status_of
            for raw in active:
                if raw not in held and status_of(raw) == CANCELLED:
                    out.add(raw)
        return [id_to_str(raw) for raw in out]

    def late_result(self, worker_id: str, item: ResultItem, current: Task) -> dict[str, Any] | None:
        """The answer to a RESULT whose lease is gone, when that attempt was cancelled (rule 3)."""
        if current.status != CANCELLED or item.attempt != current.attempt or item.attempt == 0:
            return None
        w = self._leases.workers.get(worker_id)
        if w is not None:
            w.cancelled.discard(current.id)
        self._count("late_results_cancelled")
        return {"id": id_to_str(current.id), "status": "cancelled"}
