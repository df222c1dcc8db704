"""What the engine keeps and does for insight: dead-letter groups and per-type figures (kept up to
date at every transition), deleting finished tasks, bulk requeue/delete by group or filter, and the
dead letters' own retention.

Rules:
1. The figures and groups change only through ``_insight_moved`` (called by ``Engine._set_status``
   for every status change, before the change is applied), ``_insight_inserted`` (SUBMIT),
   ``_insight_loaded`` (recovery and reload) and ``_delete``: memory never drifts from the records.
   Completed and cancelled tasks are not counted per type (retention removes them unseen by the
   engine's memory, and recovery does not read them): per-type depth is the live statuses.
2. Deleting is for finished tasks (completed, cancelled, dead_letter); a pending, in_progress or
   failed task is refused with InvalidState naming ``cancel``. A delete goes through
   ``Store.delete``: the record, its payload, its result and every index key, and the count.
3. Bulk work runs one bounded slice a call (``bulk_slice``: at most SCAN_SLICE keys looked at and
   ``limit`` tasks changed); the caller commits between slices and resumes from the returned key.
   Dead letters are found through idx_dead (by time), completed and cancelled through
   idx_finished, failed tasks by walking the live family.
Pure: no I/O; ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardq.engine.figures import N_BUCKETS, RING, WINDOW_MS, TypeFigures, Windowed
from shardq.engine.reads import SCAN_SLICE
from shardq.engine.storage import Store
from shardq.engine.triage import DeadGroups, group_of
from shardq.errors import BadRequest, InvalidState, NotFound
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
)

_U64_MAX = (1 << 64) - 1
_CLAIM, _COMPLETE = "claim", "complete"
DELETABLE = frozenset((COMPLETED, CANCELLED, DEAD_LETTER))


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Which tasks a bulk requeue/delete touches: all of ``status`` that match every field given.
    ``error`` is a case-insensitive substring of the error; ``since_ms``/``until_ms`` bound the
    time the task reached its status (updated_ms), inclusive."""

    status: int = DEAD_LETTER
    type: str | None = None
    group: str | None = None
    error: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, task: Task) -> bool:
        if task.status != self.status:
            return False
        if self.type is not None and task.type != self.type:
            return False
        if self.since_ms is not None and task.updated_ms < self.since_ms:
            return False
        if self.until_ms is not None and task.updated_ms > self.until_ms:
            return False
        if self.error is not None and self.error not in (task.error or "").lower():
            return False
        return self.group is None or group_of(task.type, task.error) == self.group


class EngineInsight:
    store: Store
    _groups: DeadGroups
    _figures: dict[str, TypeFigures]

    if TYPE_CHECKING:  # defined by Engine (engine.py)
        s: Any

        def _count(self, name: str, n: int = 1) -> None: ...
        def requeue(self, raw_id: bytes, now: int) -> Task: ...

    def _insight_reset(self) -> None:
        self._groups = DeadGroups()
        self._figures = {}

    def _figs(self, task_type: str) -> TypeFigures:
        f = self._figures.get(task_type)
        if f is None:
            f = self._figures[task_type] = TypeFigures()
        return f

    # -- keeping them (rule 1) ---------------------------------------------------------------

    def _insight_moved(self, task: Task, old: int, new: int, event: str, changes: dict[str, Any],
                       now: int) -> None:
        # The hot path (three calls per task's lifecycle): the figures' updates, figures.bucket
        # and Windowed.observe included, are written out here rather than called (figures.py has
        # them as methods, for everything else); docs/benchmarks.md has the cost.
        f = self._figures.get(task.type)
        if f is None:
            f = self._figs(task.type)
        c = f.counts
        c[old] -= 1
        c[new] += 1
        if old == PENDING:
            d = f.due_seconds
            sec = task.scheduled_ms // 1000
            n = d.get(sec, 0) - 1
            if n > 0:
                d[sec] = n
            else:
                d.pop(sec, None)
            if event == _CLAIM:
                w = f.wait
                if w is None:
                    w = f.wait = Windowed(now)
                if now - w.start >= WINDOW_MS:
                    w.roll(now)
                ms = now - task.scheduled_ms
                if ms < 4:
                    w.cur[ms if ms > 0 else 0] += 1
                else:
                    e = ms.bit_length()
                    idx = (e - 2) * 4 + ((ms >> (e - 3)) & 3)
                    w.cur[idx if idx < N_BUCKETS else N_BUCKETS - 1] += 1
        elif old == DEAD_LETTER:
            self._groups.remove(task.id, task.type, task.error, task.updated_ms)
        elif event == _COMPLETE:
            w = f.run
            if w is None:
                w = f.run = Windowed(now)
            if now - w.start >= WINDOW_MS:
                w.roll(now)
            ms = now - task.started_ms
            if ms < 4:
                w.cur[ms if ms > 0 else 0] += 1
            else:
                e = ms.bit_length()
                idx = (e - 2) * 4 + ((ms >> (e - 3)) & 3)
                w.cur[idx if idx < N_BUCKETS else N_BUCKETS - 1] += 1
            sec = now // 1000
            slot = sec % RING
            if f.ring_at[slot] != sec:
                f.ring_at[slot] = sec
                f.ring[slot] = 0
            f.ring[slot] += 1
        if new == PENDING:
            d = f.due_seconds
            sec = changes.get("scheduled_ms", task.scheduled_ms) // 1000
            d[sec] = d.get(sec, 0) + 1
        elif new == DEAD_LETTER:
            self._groups.add(task.id, task.type, changes.get("error", task.error), now)

    def _insight_loaded(self, task: Task) -> None:
        f = self._figures.get(task.type)
        if f is None:
            f = self._figs(task.type)
        f.counts[task.status] += 1
        if task.status == PENDING:
            d = f.due_seconds
            sec = task.scheduled_ms // 1000
            d[sec] = d.get(sec, 0) + 1
        elif task.status == DEAD_LETTER:
            self._groups.add(task.id, task.type, task.error, task.updated_ms)

    _insight_inserted = _insight_loaded  # SUBMIT: a new task counts as a loaded one

    def _delete(self, task: Task) -> None:
        if task.status == DEAD_LETTER:
            self._groups.remove(task.id, task.type, task.error, task.updated_ms)
            f = self._figures.get(task.type)
            if f is not None:
                f.counts[DEAD_LETTER] -= 1
        self.store.delete(task)
        self._count("deleted")

    # -- reading them ---------------------------------------------------------------------------

    def dead_groups(self, type_ok: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
        return self._groups.rows(type_ok)

    def type_figures(self, now: int, type_ok: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """This shard's figures by type (figures.TypeFigures.row); drops types gone quiet."""
        out = {}
        for task_type, f in list(self._figures.items()):
            if f.idle(now):
                del self._figures[task_type]
                continue
            if type_ok is None or type_ok(task_type):
                out[task_type] = f.row(now)
        return out

    # -- DELETE (rule 2) ---------------------------------------------------------------------------

    def delete(self, raw_id: bytes) -> Task:
        task = self.store.get(raw_id)
        if task is None:
            raise NotFound(f"no task {id_to_str(raw_id)}")
        if task.status not in DELETABLE:
            raise InvalidState(f"cannot delete a task that is {STATUS_NAMES[task.status]}: only "
                               f"completed, cancelled and dead_letter tasks are deleted; cancel it "
                               f"first (shardq cancel {id_to_str(raw_id)})"
                               + (" once its attempt ends" if task.status == IN_PROGRESS else ""))
        self._delete(task)
        return task

    # -- bulk requeue / delete (rule 3) -------------------------------------------------------------

    def bulk_slice(self, action: str, flt: TaskFilter, after: bytes | None, limit: int, now: int,
                   type_ok: Callable[[str], bool] | None = None) -> tuple[int, bytes | None]:
        """One slice of ``action`` (requeue, delete, count) on the tasks ``flt`` matches, after
        the key ``after``: (tasks done or counted, the key to resume after, None at the end)."""
        if action == "requeue" and flt.status not in (DEAD_LETTER, FAILED):
            raise BadRequest(f"status: only dead_letter and failed tasks are requeued, not "
                             f"{STATUS_NAMES[flt.status]}")
        if action == "delete" and flt.status not in DELETABLE:
            raise BadRequest(f"status: only completed, cancelled and dead_letter tasks are deleted, "
                             f"not {STATUS_NAMES[flt.status]} (cancel them first)")
        done = 0
        last: bytes | None = None
        scanned = 0
        for key, task in self._candidates(flt, after):
            scanned += 1
            last = key
            if task is None or not flt.matches(task) or (type_ok is not None and not type_ok(task.type)):
                continue
            if action == "requeue":
                try:
                    self.requeue(task.id, now)
                except InvalidState:
                    continue
            elif action == "delete":
                self._delete(task)
            done += 1
            if done >= limit:
                return done, last
        return done, (last if scanned >= SCAN_SLICE else None)

    def _candidates(self, flt: TaskFilter, after: bytes | None) -> Iterator[tuple[bytes, Task | None]]:
        """(resume key, task or None) for at most SCAN_SLICE keys of the source that holds ``flt``'s
        status (rule 3); the time bounds narrow the index range."""
        store = self.store
        if flt.status == FAILED or flt.status == PENDING or flt.status == IN_PROGRESS:
            yield from store.scan_status(flt.status, after, SCAN_SLICE)
            return
        index = "idx_dead" if flt.status == DEAD_LETTER else "idx_finished"
        if after is None and flt.since_ms:
            after = (flt.since_ms - 1).to_bytes(8, "big") + b"\xff" * 16
        upper = None if flt.until_ms is None else min(flt.until_ms + 1, _U64_MAX).to_bytes(8, "big")
        for key in store.scan_index(index, b"", after, SCAN_SLICE, upper=upper):
            yield key, store.get(key[8:])

    def dead_retention_slice(self, now: int, max_keys: int = 1000) -> int:
        """Delete dead letters dead-lettered longer ago than the dead-letter retention (one bounded
        slice; none when it is 0)."""
        if not self.s.dead_retention_ms:
            return 0
        cutoff = (now - self.s.dead_retention_ms).to_bytes(8, "big")
        removed = 0
        for key in self.store.scan_index("idx_dead", b"", None, max_keys, upper=cutoff):
            task = self.store.get(key[8:])
            if task is not None and task.status == DEAD_LETTER:
                self._delete(task)
                removed += 1
        self._count("dead_retention_deleted", removed)
        return removed

