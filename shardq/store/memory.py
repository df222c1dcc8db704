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
    FAMILY_OF,
    IDX,
    INDEX_TAGS,
    LIVE,
    finished_key,
    type_key,
)
from shardq.store.layout import index_key as _index_key
from shardq.task import INLINE_PAYLOAD_MAX, Task, owner_of

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

    def _record(self, raw_id: bytes) -> bytes | None:
        data = self._cf["live"].get(raw_id)
        return self._cf["done"].get(raw_id) if data is None else data

    def status_of(self, raw_id: bytes) -> int | None:
        if raw_id in self._overlay:
            t = self._overlay[raw_id]
            return None if t is None else t.status
        data = self._record(raw_id)
        return None if data is None else data[1]

    def get(self, raw_id: bytes) -> Task | None:
        if raw_id in self._overlay:
            return self._overlay[raw_id]
        data = self._record(raw_id)
        return None if data is None else Task.decode(raw_id, data)

    def get_in(self, status: int, raw_id: bytes) -> Task | None:
        if raw_id in self._overlay:
            t = self._overlay[raw_id]
            return t if t is not None and t.status == status else None
        data = self._cf[FAMILY_OF[status]].get(raw_id)
        return None if data is None or data[1] != status else Task.decode(raw_id, data)

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
        self._put(FAMILY_OF[task.status], rid, task.encode())
        self._put(IDX, type_key(task), b"")
        fk = finished_key(task)
        if fk is not None:
            self._put(IDX, fk, b"")
        self._overlay[rid] = task
        self.counts[task.status] += 1
        self.staged += 1

    def update(self, task: Task, old_status: int, old_index_key: bytes | None = None) -> None:
        rid = task.id
        if old_status != task.status:
            if FAMILY_OF[old_status] != FAMILY_OF[task.status]:
                self._delete(FAMILY_OF[old_status], rid)
            self.counts[old_status] -= 1
            self.counts[task.status] += 1
        self._put(FAMILY_OF[task.status], rid, task.encode())
        new_fk = finished_key(task)
        if new_fk != old_index_key:
            if old_index_key is not None:
                self._delete(IDX, old_index_key)
            if new_fk is not None:
                self._put(IDX, new_fk, b"")
        self._overlay[rid] = task
        self.staged += 1

    index_key = staticmethod(_index_key)

    def put_result(self, raw_id: bytes, result: bytes) -> None:
        self._put("results", raw_id, result)
        self._overlay_results[raw_id] = result
        self.staged += 1

    def index_put(self, key: bytes, present: bool = True) -> None:
        self._put(IDX, key, b"") if present else self._delete(IDX, key)
        self.staged += 1

    def delete(self, task: Task) -> None:
        rid = task.id
        self._delete(FAMILY_OF[task.status], rid)
        self._delete(IDX, type_key(task))
        fk = finished_key(task)
        if fk is not None:
            self._delete(IDX, fk)
        self._delete("payloads", rid)
        self._delete("results", rid)
        self._overlay[rid] = None
        self.counts[task.status] -= 1
        self.staged += 1

    def meta_put(self, key: bytes, value: bytes) -> None:
        self._put("metadata", key, value)
        self.staged += 1

    def meta_delete(self, key: bytes) -> None:
        self._delete("metadata", key)
        self.staged += 1

    def meta_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value in self._snapshot("metadata", prefix, None, len(self._cf["metadata"])):
            if not key.startswith(prefix):
                return
            yield key, value

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

    def scan_status(self, status: int, after: bytes | None,
                    max_keys: int) -> Iterator[tuple[bytes, Task | None]]:
        for key, data in self._snapshot(FAMILY_OF[status], None, after, max_keys):
            yield key, (Task.decode(key, data) if data[1] == status else None)

    def scan_index(self, index: str, prefix: bytes, after: bytes | None, max_keys: int,
                   upper: bytes | None = None) -> Iterator[bytes]:
        tag = INDEX_TAGS[index]
        full, stop = tag + prefix, None if upper is None else tag + upper
        for key, _ in self._snapshot(IDX, full, None if after is None else tag + after, max_keys):
            if not key.startswith(full) or (stop is not None and key >= stop):
                return
            yield key[1:]

    def iter_live(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._snapshot(LIVE, None, None, len(self._cf[LIVE])))

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
