"""The engine's read side: what a shard answers about its tasks, its ready work and its workers.

Rules:
1. Nothing here changes a status, stages a write or touches a lease: these are reads of the store
   and of the engine's memory (the ready heaps, the lease table, the waiting claims). Every status
   change stays in engine.py.
2. Scans are bounded: LIST_TASKS looks at most SCAN_SLICE keys a call.

`EngineReads` is a mixin of `Engine` (engine.py), not an object the Engine owns: the server calls
these as ``engine.query(...)``, ``engine.stats()``, like every other operation, and they read the
very memory that the engine's writes keep, so one object stays the one entry point. The attributes
declared below are the Engine's (set in ``Engine.__init__``), named here for the type checker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardq.engine.leases import LeaseTable, Worker
from shardq.engine.ready import _HEAD_SHIFT, ReadyQueue, _key_id
from shardq.engine.settings import EngineSettings
from shardq.engine.storage import Store
from shardq.engine.waiters import ClaimWaiter, WaitingClaims
from shardq.errors import BadRequest
from shardq.task import IN_PROGRESS, PENDING, STATUS_NAMES, Task, tier_rank

# Bounded scans: LIST_TASKS and REQUEUE look at most this many keys per call.
SCAN_SLICE = 2000


class EngineReads:
    store: Store
    s: EngineSettings
    pending_by_tier: dict[str, int]
    _ready: ReadyQueue
    _leases: LeaseTable
    _waiters: WaitingClaims

    # -- QUERY_STATUS ------------------------------------------------------------

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

    # -- LIST_TASKS ------------------------------------------------------------

    def list_tasks(self, status: int, task_type: str | None, min_priority: int, max_priority: int,
                   limit: int, cursor: str | None,
                   type_ok: Callable[[str], bool] | None = None) -> tuple[list[Task], str | None]:
        """One page; the order is by task id (see docs/protocol.md). Bounded: looks at
        most SCAN_SLICE keys, so a page may be short with a non-null cursor. ``type_ok``:
        only tasks of the types it accepts (an API key's patterns)."""
        after = _decode_cursor(cursor)
        out: list[Task] = []
        last: bytes | None = None
        scanned = 0
        full_range = min_priority == 0 and max_priority == 255
        if task_type is None:
            for raw, task in self.store.scan_status(status, after, SCAN_SLICE):
                scanned += 1
                last = raw
                if task is not None and (full_range or min_priority <= task.priority <= max_priority) and \
                        (type_ok is None or type_ok(task.type)):
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
                found = self.store.get(raw)
                if found is None or found.status != status:
                    continue
                if full_range or min_priority <= found.priority <= max_priority:
                    out.append(found)
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
    # -- ready work, waiting claims, workers ---------------------------------------

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

    @property
    def waiting_claims(self) -> int:
        return self._waiters.waiting()

def _rank(ready_key: int) -> int:
    """0, 1, 2 for the low, normal, high tier of a ready-heap entry's priority."""
    return tier_rank(255 - (ready_key >> _HEAD_SHIFT))


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

