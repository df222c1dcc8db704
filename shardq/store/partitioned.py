"""N shard stores behind the one interface the engine uses.

Rule: a task lives in the store of its owner shard, ``owner_of(id, N)``, and
nowhere else. This is the data-dir layout the multi-process server uses (one
process per shard, each opening only its own store); while shards run inside
one process, this facade routes every call by id and commits every store that
has staged writes before the shard answers.

Data dir layout:

    <data_dir>/shardq.json          {"shards": N, "layout": 1}  (written once)
    <data_dir>/shard-<i>/           RocksDB of shard i (store/rocks.py)
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterator

from shardq.store.rocks import Store, StoreError, StoreSettings, StoreWriteError
from shardq.task import Task, owner_of

LAYOUT_VERSION = 1
LAYOUT_FILE = "shardq.json"


def recorded_shards(data_dir: str) -> int | None:
    """The shard count recorded in a data dir, or None for a new one."""
    path = os.path.join(data_dir, LAYOUT_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: cannot be read ({exc})") from exc
    shards = meta.get("shards")
    if type(shards) is not int or shards < 1:
        raise StoreError(f"{path}: 'shards' is {shards!r}, expected a positive integer")
    return shards


def resolve_shards(data_dir: str, requested: int | str) -> int:
    """``auto`` -> the recorded count, or the usable CPUs for a new data dir.

    An explicit count that differs from the recorded one is refused: tasks are
    placed by ``id mod shards``, so changing it would orphan them."""
    recorded = recorded_shards(data_dir)
    if requested == "auto":
        if recorded is not None:
            return recorded
        return max(1, len(os.sched_getaffinity(0)))
    count = int(requested)
    if recorded is not None and recorded != count:
        raise StoreError(
            f"{data_dir} was created with {recorded} shards; --shards {count} would orphan its "
            f"tasks. Start with --shards auto (or {recorded}), or reshard offline into a new data dir.")
    return count


def record_shards(data_dir: str, shards: int) -> None:
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, LAYOUT_FILE)
    if os.path.exists(path):
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"shards": shards, "layout": LAYOUT_VERSION}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class PartitionedStore:
    """Routes by owner; looks like one ``Store`` to the engine."""

    def __init__(self, data_dir: str, shards: int, settings: StoreSettings | None = None,
                 own: int | None = None) -> None:
        """Open every shard's store, or with ``own`` only that shard's (a shard process)."""
        record_shards(data_dir, shards)
        self.shards = shards
        self.own = own
        self.parts = []
        try:
            for i in (range(shards) if own is None else (own,)):
                store = Store(os.path.join(data_dir, f"shard-{i}"), settings)
                self.parts.append(store)
                store.init_layout(i, shards)
        except Exception:
            for store in self.parts:
                store.close()
            raise

    def part_index(self, raw_id: bytes) -> int:
        return owner_of(raw_id, self.shards) if self.shards > 1 else 0

    def slot(self, raw_id: bytes) -> int:
        """The position in ``parts`` of the store that holds ``raw_id``."""
        return owner_of(raw_id, self.shards) if self.own is None and self.shards > 1 else 0

    def owns(self, raw_id: bytes) -> bool:
        """Whether the task is in one of these stores (not another process's)."""
        return self.own is None or self.shards == 1 or owner_of(raw_id, self.shards) == self.own

    def part(self, raw_id: bytes) -> Store:
        return self.parts[owner_of(raw_id, self.shards)] if self.own is None and self.shards > 1 \
            else self.parts[0]

    # -- the Store interface ---------------------------------------------------

    @property
    def counts(self) -> list[int]:
        if len(self.parts) == 1:
            return self.parts[0].counts
        return [sum(p.counts[i] for p in self.parts) for i in range(6)]

    @property
    def staged(self) -> int:
        return sum(p.staged for p in self.parts)

    def status_of(self, raw_id: bytes) -> int | None:
        return self.part(raw_id).status_of(raw_id)

    def get(self, raw_id: bytes) -> Task | None:
        return self.part(raw_id).get(raw_id)

    def get_in(self, status: int, raw_id: bytes) -> Task | None:
        return self.part(raw_id).get_in(status, raw_id)

    def get_payload(self, raw_id: bytes) -> bytes:
        return self.part(raw_id).get_payload(raw_id)

    def payload_of(self, task: Task) -> bytes:
        return self.part(task.id).payload_of(task)

    def get_result(self, raw_id: bytes) -> bytes:
        return self.part(raw_id).get_result(raw_id)

    def insert(self, task: Task, payload: bytes) -> None:
        self.part(task.id).insert(task, payload)

    def update(self, task: Task, old_status: int, old_index_key: bytes | None = None) -> None:
        self.part(task.id).update(task, old_status, old_index_key)

    index_key = staticmethod(Store.index_key)

    def put_result(self, raw_id: bytes, result: bytes) -> None:
        self.part(raw_id).put_result(raw_id, result)

    def delete(self, task: Task) -> None:
        self.part(task.id).delete(task)

    def index_put(self, key: bytes, present: bool = True) -> None:
        """An idx key that ends with a task id goes to the store of that task."""
        self.part(key[-16:]).index_put(key, present)

    def meta_put(self, key: bytes, value: bytes) -> None:
        self.parts[0].meta_put(key, value)

    def meta_delete(self, key: bytes) -> None:
        self.parts[0].meta_delete(key)

    def meta_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self.parts[0].meta_items(prefix)

    def commit(self) -> int:
        """Commit every part with staged writes. When one fails, the parts not written yet
        drop theirs too (StoreWriteError is raised): the caller rebuilds memory from disk."""
        n = 0
        try:
            for p in self.parts:
                if p.staged:
                    n += p.commit()
        except StoreWriteError:
            self.discard()
            raise
        return n

    def discard(self) -> int:
        return sum(p.discard() for p in self.parts)

    def probe(self) -> None:
        for p in self.parts:
            p.probe()

    @property
    def paths(self) -> list[str]:
        return [p.path for p in self.parts]

    def sync_wal(self) -> bool:
        """fsync the WAL of every part written since its last sync; whether any was."""
        synced = [p.sync_wal() for p in self.parts]
        return any(synced)

    def scan_status(self, status: int, after: bytes | None,
                    max_keys: int) -> Iterator[tuple[bytes, Task | None]]:
        if len(self.parts) == 1:
            return self.parts[0].scan_status(status, after, max_keys)
        merged = heapq.merge(*(p.scan_status(status, after, max_keys) for p in self.parts),
                             key=lambda kt: kt[0])
        return (kt for _, kt in zip(range(max_keys), merged))

    def scan_index(self, index: str, prefix: bytes, after: bytes | None, max_keys: int,
                   upper: bytes | None = None) -> Iterator[bytes]:
        if len(self.parts) == 1:
            return self.parts[0].scan_index(index, prefix, after, max_keys, upper)
        merged = heapq.merge(*(p.scan_index(index, prefix, after, max_keys, upper) for p in self.parts))
        return (k for _, k in zip(range(max_keys), merged))

    def iter_live(self) -> Iterator[tuple[bytes, bytes]]:
        for p in self.parts:
            yield from p.iter_live()

    @property
    def migrated(self) -> list[dict[str, float]]:
        """What opening the parts migrated (store/migrate.py), one entry per migrated part."""
        return [p.migrated for p in self.parts if p.migrated is not None]

    def recount(self, status: int, ids: list[bytes]) -> bool:
        """Recovery found exactly ``ids`` in ``status``: correct each part's persisted count
        that disagrees (staged); True if any did."""
        if len(self.parts) == 1:
            actual_by_part = [len(ids)]
        else:
            actual_by_part = [0] * len(self.parts)
            slot = self.slot
            for raw in ids:
                actual_by_part[slot(raw)] += 1
        wrong = False
        for p, n in zip(self.parts, actual_by_part):
            if p.counts[status] != n:
                p.counts[status] = n
                p.staged += 1
                wrong = True
        return wrong

    def compact(self) -> None:
        for p in self.parts:
            p.compact()

    def property_int(self, name: str) -> int:
        return sum(p.property_int(name) for p in self.parts)

    def close(self) -> None:
        for p in self.parts:
            p.close()
