"""Which pending task a CLAIM gets next: the ready heaps and the schedule heap.

Rules:
1. This file orders task ids, nothing more: it never reads the store and never
   changes a task's status. The engine hands it a pending task (``enqueue``),
   and asks it for the best entry (``pop_best``) or for the entries that fell
   due (``pop_due``).
2. One ready heap per task type, so a CLAIM with ``types`` never looks at other
   types. A heap that empties is removed: ``heaps`` is empty when nothing is ready.
3. Entries are lazy: a cancelled or re-scheduled task leaves its old entry
   behind, and the engine checks an entry against the record when it comes to
   the top. ``scheduled`` is the exact set of pending tasks not yet due (the
   engine drops a task from it when the task leaves pending); the schedule heap
   also holds failed tasks waiting for their retry, which are not in that set.
4. ``dirty`` says a task became ready since the waiting claims were last served;
   the engine clears it when it serves them.
5. A type in ``blocked`` (paused, at its concurrency cap, out of rate tokens: engine/controls.py)
   keeps its heap in ``held`` instead of ``heaps``: no claim, ready hint or waiting claim sees
   it, and a type with no controls pays nothing for the feature (one dict miss when its heap is
   made).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardq.task import Task

# Heap entries are single ints (~60 bytes, where a (priority, seq, id) tuple is ~150):
#   ready heap:    (255 - priority) << 200 | seq << 128 | id
#   schedule heap: scheduled_ms     << 200 | seq << 128 | id
# Comparing the ints compares the fields from the left; seq stays below 2^72.
_HEAD_SHIFT = 200
_ID_MASK = (1 << 128) - 1


def _ready_key(priority: int, seq: int, raw_id: bytes) -> int:
    return ((255 - priority) << _HEAD_SHIFT) | (seq << 128) | int.from_bytes(raw_id, "big")


def _schedule_key(when_ms: int, seq: int, raw_id: bytes) -> int:
    return (when_ms << _HEAD_SHIFT) | (seq << 128) | int.from_bytes(raw_id, "big")


def _key_id(key: int) -> bytes:
    return (key & _ID_MASK).to_bytes(16, "big")


class ReadyQueue:
    """The ready heaps (one per type) and the schedule heap of one shard."""

    __slots__ = ("heaps", "schedule", "scheduled", "dirty", "held", "blocked")

    def __init__(self) -> None:
        self.heaps: dict[str, list[int]] = {}  # per type, of _ready_key
        self.schedule: list[int] = []  # of _schedule_key
        self.scheduled: set[bytes] = set()  # pending tasks not yet due
        self.dirty = False
        self.held: dict[str, list[int]] = {}  # heaps of blocked types (rule 5)
        self.blocked: set[str] = set()

    def enqueue(self, task: Task, now: int) -> None:
        """A pending task whose dependencies are met: ready now, or scheduled."""
        if task.scheduled_ms > now:
            self.scheduled.add(task.id)
            heapq.heappush(self.schedule, _schedule_key(task.scheduled_ms, task.seq, task.id))
        else:
            heap = self.heaps.get(task.type)
            if heap is None:
                if task.type in self.blocked:
                    heapq.heappush(self.held.setdefault(task.type, []),
                                   _ready_key(task.priority, task.seq, task.id))
                    return
                heap = self.heaps[task.type] = []
            heapq.heappush(heap, _ready_key(task.priority, task.seq, task.id))
            self.dirty = True

    def schedule_retry(self, task: Task) -> None:
        """A failed task: it comes back through ``pop_due`` at its ``scheduled_ms``."""
        heapq.heappush(self.schedule, _schedule_key(task.scheduled_ms, task.seq, task.id))

    def wake_at(self, when_ms: int, task: Task) -> None:
        """An entry at ``when_ms`` that is not the task's scheduled time (its expiry: the
        engine checks the record when it comes due, taskopts.py)."""
        heapq.heappush(self.schedule, _schedule_key(when_ms, task.seq, task.id))

    def pop_best(self, types: frozenset[str] | None) -> int | None:
        """Pop the best entry (highest priority, then FIFO) of ``types`` (None: of any
        type), or None when none of them is ready. ``_key_id`` gives its task id."""
        ready = self.heaps
        best_heap: list[int] | None = None
        best_type = None
        if types is None:
            candidates: Iterable[str] = list(ready)
        elif isinstance(types, frozenset):
            candidates = [t for t in types if t in ready]
        else:  # a filter (patterns.TypePatterns): every ready type it matches
            candidates = [t for t in ready if t in types]
        for t in candidates:
            heap = ready[t]
            if best_heap is None or heap[0] < best_heap[0]:
                best_heap, best_type = heap, t
        if best_heap is None:
            return None
        entry = heapq.heappop(best_heap)
        if not best_heap:
            del ready[best_type]  # type: ignore[arg-type]
        return entry

    def push_back(self, task_type: str, entry: int) -> None:
        """Put back an entry from ``pop_best`` that the claim did not take."""
        target = self.held if task_type in self.blocked else self.heaps
        heapq.heappush(target.setdefault(task_type, []), entry)

    def block(self, task_type: str) -> None:
        """Hide ``task_type``'s ready tasks from claims until ``unblock``."""
        self.blocked.add(task_type)
        heap = self.heaps.pop(task_type, None)
        if heap:
            self.held[task_type] = heap

    def unblock(self, task_type: str) -> None:
        """Make ``task_type``'s ready tasks claimable again (waiting claims are served)."""
        self.blocked.discard(task_type)
        heap = self.held.pop(task_type, None)
        if heap:
            self.heaps[task_type] = heap
            self.dirty = True

    def ready_count(self, task_type: str) -> int:
        """Ready entries of ``task_type``, held or not (lazy entries included: an estimate)."""
        return len(self.heaps.get(task_type) or self.held.get(task_type) or ())

    def pop_due(self, now: int) -> Iterator[tuple[int, bytes]]:
        """Pop the schedule entries due at ``now``: (scheduled_ms, task id) each."""
        sched = self.schedule
        while sched and sched[0] >> _HEAD_SHIFT <= now:
            key = heapq.heappop(sched)
            yield key >> _HEAD_SHIFT, _key_id(key)

    def wake(self, task: Task, now: int) -> None:
        """A pending task whose scheduled time came: ready now, if it was waiting for it."""
        if task.id in self.scheduled:
            self.scheduled.discard(task.id)
            self.enqueue(task, now)

    def next_due(self) -> int | None:
        return self.schedule[0] >> _HEAD_SHIFT if self.schedule else None

    def restore(self, heaps: dict[str, list[int]], schedule: list[int], scheduled: set[bytes]) -> None:
        """Take over what recovery scanned: unordered ready entries per type (they replace
        the ready heaps) and schedule entries, heapified here once, and the pending ids not
        yet due. The containers are adopted, not copied: recovery may hand over millions."""
        for heap in heaps.values():
            heapq.heapify(heap)
        self.held = {t: heaps.pop(t) for t in self.blocked & heaps.keys()}
        self.heaps = heaps
        schedule.extend(self.schedule)
        heapq.heapify(schedule)
        self.schedule = schedule
        scheduled.update(self.scheduled)
        self.scheduled = scheduled


def type_filter(types: Any) -> Any:
    """A CLAIM's types as ``ReadyQueue.pop_best`` takes them: None (any type), a frozenset of
    literal types, or a filter that answers ``in`` (patterns.TypePatterns: a scoped API key)."""
    if types is None or isinstance(types, frozenset) or hasattr(types, "matches"):
        return types
    return frozenset(types)
