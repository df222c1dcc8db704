"""One shard's store in dicts: the engine's ``Store`` protocol without a disk.

Rules:
1. Same semantics as the RocksDB store, as far as the engine can see (engine/storage.py): the
   same key layout (store/layout.py) in one dict per column family, records kept encoded (a read
   decodes a fresh Task, as from disk), writes staged in a batch and made visible to reads by id
   through an overlay, applied all at once by ``commit``; scans see only what was committed.
2. ``MemoryDisk`` is what a data dir would hold: a store closed and opened again on the same disk
   (``MemoryStore(disk=old.disk)``) sees what was committed and nothing staged, as after a
   restart; the counts are persisted with every commit, as RocksDB's are.
3. Pure: no I/O. Not made for size: a scan sorts the keys of a family it has not sorted since
   that family last changed.

With ``shards`` > 1 and no ``own`` it holds every shard's tasks (as PartitionedStore does with
several parts in one process); with ``own`` it holds shard ``own``'s only.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import TYPE_CHECKING

from shardq.store.layout import (
    ALL_CFS,
    COUNTS,
    STATUS_BYTES,
    STATUS_CFS,
    finished_key,
    priority_key,
    scheduled_key,
    type_key,
)
from shardq.store.layout import index_keys as _index_keys
from shardq.task import INLINE_PAYLOAD_MAX, STATUS_NAMES, Task, owner_of

if TYPE_CHECKING:
    from shardq.engine.storage import Store

_Op = tuple[str, bytes, bytes | None]  # (family, key, value or None to delete)


class MemoryDisk:
    """The committed state: one dict per column family, and each family's sorted keys."""

    __slots__ = ("families", "_sorted")

    def __init__(self) -> None:
        self.families: dict[str, dict[bytes, bytes]] = {name: {} for name in ALL_CFS}
        self._sorted: dict[str, list[bytes]] = {}

    def write(self, batch: list[_Op]) -> None:
        for cf, key, value in batch:
            family = self.families[cf]
            if value is None:
                family.pop(key, None)
            else:
                family[key] = value
            self._sorted.pop(cf, None)

    def keys(self, cf: str) -> list[bytes]:
        """The family's keys in byte order (what a RocksDB iterator walks)."""
        keys = self._sorted.get(cf)
        if keys is None:
            keys = self._sorted[cf] = sorted(self.families[cf])
        return keys


class MemoryStore:
    """A shard's tasks in memory; the same interface and semantics as store/rocks.py's Store."""

    def __init__(self, shards: int = 1, own: int | None = None, disk: MemoryDisk | None = None) -> None:
        self.shards = shards
        self.own = own
        self.disk = disk if disk is not None else MemoryDisk()
        self._cf = self.disk.families
        self._batch: list[_Op] = []
        self._overlay: dict[bytes, Task | None] = {}
        self._overlay_payloads: dict[bytes, bytes] = {}
        self._overlay_results: dict[bytes, bytes] = {}
        self.staged = 0
        raw = self._cf["metadata"].get(b"counts")
        self.counts = list(COUNTS.unpack(raw)) if raw else [0] * 6

    def owns(self, raw_id: bytes) -> bool:
        return self.own is None or self.shards == 1 or owner_of(raw_id, self.shards) == self.own

    # -- reads (overlay first) -------------------------------------------------

    def status_of(self, raw_id: bytes) -> int | None:
        if raw_id in self._overlay:
            t = self._overlay[raw_id]
            return None if t is None else t.status
        s = self._cf["idx_status"].get(raw_id)
        return None if s is None else s[0]

    def get(self, raw_id: bytes) -> Task | None:
        if raw_id in self._overlay:
            return self._overlay[raw_id]
        s = self._cf["idx_status"].get(raw_id)
        if s is None:
            return None
        data = self._cf[STATUS_CFS[s[0]]].get(raw_id)
        if data is None:
            raise LookupError(f"index says {raw_id.hex()} is {STATUS_NAMES[s[0]]} but no record is there")
        return Task.decode(raw_id, data)

    def get_in(self, status: int, raw_id: bytes) -> Task | None:
        if raw_id in self._overlay:
            t = self._overlay[raw_id]
            return t if t is not None and t.status == status else None
        data = self._cf[STATUS_CFS[status]].get(raw_id)
        return None if data is None else Task.decode(raw_id, data)

    def get_payload(self, raw_id: bytes) -> bytes:
        task = self.get(raw_id)
        return b"" if task is None else self.payload_of(task)

    def payload_of(self, task: Task) -> bytes:
        if task.inline_payload is not None:
            return task.inline_payload
        if not task.payload_len:
            return b""
        p = self._overlay_payloads.get(task.id)
        if p is not None:
            return p
        return self._cf["payloads"].get(task.id) or b""

    def get_result(self, raw_id: bytes) -> bytes:
        r = self._overlay_results.get(raw_id)
        if r is not None:
            return r
        return self._cf["results"].get(raw_id) or b""

    # -- staged writes -----------------------------------------------------------

    def _put(self, cf: str, key: bytes, value: bytes) -> None:
        self._batch.append((cf, key, value))

    def _delete(self, cf: str, key: bytes) -> None:
        self._batch.append((cf, key, None))

    def insert(self, task: Task, payload: bytes) -> None:
        rid = task.id
        task.payload_len = len(payload)
        if len(payload) <= INLINE_PAYLOAD_MAX:
            task.inline_payload = payload
        else:
            self._put("payloads", rid, payload)
            self._overlay_payloads[rid] = payload
        self._put(STATUS_CFS[task.status], rid, task.encode())
        self._put("idx_status", rid, STATUS_BYTES[task.status])
        self._put("idx_type", type_key(task), b"")
        self._put("idx_priority", priority_key(task), b"")
        sk = scheduled_key(task)
        if sk is not None:
            self._put("idx_scheduled", sk, b"")
        fk = finished_key(task)
        if fk is not None:
            self._put("idx_finished", fk, b"")
        self._overlay[rid] = task
        self.counts[task.status] += 1
        self.staged += 1

    def update(self, task: Task, old_status: int, old_scheduled_key: bytes | None = None,
               old_finished_key: bytes | None = None) -> None:
        rid = task.id
        if old_status != task.status:
            self._delete(STATUS_CFS[old_status], rid)
            self._put("idx_status", rid, STATUS_BYTES[task.status])
            self.counts[old_status] -= 1
            self.counts[task.status] += 1
        self._put(STATUS_CFS[task.status], rid, task.encode())
        new_sk = scheduled_key(task)
        if new_sk != old_scheduled_key:
            if old_scheduled_key is not None:
                self._delete("idx_scheduled", old_scheduled_key)
            if new_sk is not None:
                self._put("idx_scheduled", new_sk, b"")
        new_fk = finished_key(task)
        if new_fk != old_finished_key:
            if old_finished_key is not None:
                self._delete("idx_finished", old_finished_key)
            if new_fk is not None:
                self._put("idx_finished", new_fk, b"")
        self._overlay[rid] = task
        self.staged += 1

    index_keys = staticmethod(_index_keys)

    def put_result(self, raw_id: bytes, result: bytes) -> None:
        self._put("results", raw_id, result)
        self._overlay_results[raw_id] = result
        self.staged += 1

    def delete(self, task: Task) -> None:
        rid = task.id
        self._delete(STATUS_CFS[task.status], rid)
        self._delete("idx_status", rid)
        self._delete("idx_type", type_key(task))
        self._delete("idx_priority", priority_key(task))
        self._delete("payloads", rid)
        self._delete("results", rid)
        sk, fk = scheduled_key(task), finished_key(task)
        if sk is not None:
            self._delete("idx_scheduled", sk)
        if fk is not None:
            self._delete("idx_finished", fk)
        self._overlay[rid] = None
        self.counts[task.status] -= 1
        self.staged += 1

    def commit(self) -> int:
        n = self.staged
        if not n:
            return 0
        self._put("metadata", b"counts", COUNTS.pack(*self.counts))
        self.disk.write(self._batch)
        self._batch = []
        self._overlay.clear()
        self._overlay_payloads.clear()
        self._overlay_results.clear()
        self.staged = 0
        return n

    # -- scans (committed state only) -------------------------------------------------

    def _snapshot(self, cf: str, start: bytes | None, after: bytes | None,
                  max_keys: int) -> list[tuple[bytes, bytes]]:
        """Up to ``max_keys`` committed (key, value) pairs in byte order from ``start`` (or the
        first key), strictly after ``after``: what a RocksDB iterator (a snapshot) would walk."""
        keys = self.disk.keys(cf)
        if after is not None:
            i = bisect_right(keys, after)
        else:
            i = 0 if start is None else bisect_left(keys, start)
        family = self._cf[cf]
        return [(key, family[key]) for key in keys[i:i + max_keys]]

    def scan_status(self, status: int, after: bytes | None, max_keys: int) -> Iterator[Task]:
        for key, data in self._snapshot(STATUS_CFS[status], None, after, max_keys):
            yield Task.decode(key, data)

    def scan_index(self, index: str, prefix: bytes, after: bytes | None, max_keys: int,
                   upper: bytes | None = None) -> Iterator[bytes]:
        for key, _ in self._snapshot(index, prefix, after, max_keys):
            if not key.startswith(prefix) or (upper is not None and key >= upper):
                return
            yield key

    def iter_records(self, status: int) -> Iterator[tuple[bytes, bytes]]:
        cf = STATUS_CFS[status]
        return iter(self._snapshot(cf, None, None, len(self._cf[cf])))

    def verify_status_index(self, status: int, ids: list[bytes]) -> int:
        want = STATUS_BYTES[status]
        index = self._cf["idx_status"]
        repaired = 0
        for raw in ids:
            if index.get(raw) != want:
                self._put("idx_status", raw, want)
                self.staged += 1
                repaired += 1
        return repaired

    def recount(self, status: int, ids: list[bytes]) -> bool:
        if self.counts[status] == len(ids):
            return False
        self.counts[status] = len(ids)
        self.staged += 1
        return True

    # -- for tests and tools ----------------------------------------------------------

    def count_keys(self, cf: str) -> int:
        return len(self._cf[cf])

    def close(self) -> None:
        self.commit()


if TYPE_CHECKING:  # MemoryStore is a Store as the engine sees it: mypy checks this line
    _memory_is_a_store: type[Store] = MemoryStore
