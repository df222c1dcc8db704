"""The store as the engine sees it: exactly the calls the engine makes, and what they promise.

Rules:
1. The engine depends on this protocol, never on a concrete store: ``store/partitioned.py``
   (RocksDB, one per shard) and ``store/memory.py`` (dicts, for tests) both satisfy it.
2. Writes are staged: ``insert``, ``update``, ``put_result``, ``delete`` are visible at once to the
   reads by id (``status_of``, ``get``, ``get_in``, ``payload_of``), and reach the durable state
   only at ``commit``, all together. Scans (``scan_status``, ``scan_index``, ``iter_live``)
   see only what was committed.
3. A task read by id is the store's to keep until the next commit: the engine changes it only
   through ``update`` (after reading ``index_key`` of the unchanged task).
4. Index keys are ``scan_index``'s currency: ``idx_type`` keys are ``type utf-8 | 0x00 | id``,
   ``idx_finished`` keys are ``updated_ms u64 BE | id`` (store/layout.py has the whole layout).
5. Tasks are kept in two families: live (pending, in_progress, failed, dead_letter) and done
   (completed, cancelled). A scan by status walks the family and says which ids had it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from shardq.task import Task


class Store(Protocol):
    """One shard's tasks, as the engine uses them (see the rules above)."""

    @property
    def counts(self) -> list[int]:
        """Tasks per status code, staged changes included."""
        ...

    @property
    def staged(self) -> int:
        """Changes staged since the last commit."""
        ...

    def owns(self, raw_id: bytes) -> bool:
        """Whether the task would be in this store (not in another shard's)."""
        ...

    def status_of(self, raw_id: bytes) -> int | None: ...

    def get(self, raw_id: bytes) -> Task | None: ...

    def get_in(self, status: int, raw_id: bytes) -> Task | None:
        """The task if it is in ``status``, else None."""
        ...

    def payload_of(self, task: Task) -> bytes: ...

    def index_key(self, task: Task) -> bytes | None:
        """The task's time-index key now; hand it to ``update`` after changing it."""
        ...

    def insert(self, task: Task, payload: bytes) -> None: ...

    def update(self, task: Task, old_status: int, old_index_key: bytes | None = None) -> None: ...

    def put_result(self, raw_id: bytes, result: bytes) -> None: ...

    def index_put(self, key: bytes, present: bool = True) -> None:
        """Stage (or, not ``present``, remove) a key of an index the engine keeps itself
        (``idx_unique``: tag byte first, the task id last); scan_index sees it after commit."""
        ...

    def delete(self, task: Task) -> None:
        """Remove a task and everything about it (retention)."""
        ...

    def commit(self) -> int:
        """Make everything staged durable at once; returns how many changes it was."""
        ...

    def scan_status(self, status: int, after: bytes | None,
                    max_keys: int) -> Iterator[tuple[bytes, Task | None]]:
        """The committed ids of the family that holds ``status`` in id order, strictly after
        ``after``, at most ``max_keys`` of them: each with its task when it has ``status``."""
        ...

    def scan_index(self, index: str, prefix: bytes, after: bytes | None, max_keys: int,
                   upper: bytes | None = None) -> Iterator[bytes]:
        """Committed keys of ``index`` that start with ``prefix`` (and are below ``upper``),
        in order, strictly after ``after``."""
        ...

    def iter_live(self) -> Iterable[tuple[bytes, bytes]]:
        """Every committed (id, encoded record) that is pending, in_progress, failed or
        dead_letter (the status is the record's byte 1): for recovery."""
        ...

    # Small records beside the tasks (the ``metadata`` family; engine/schedules.py keeps its
    # schedules there): staged and committed with the tasks' writes, in the same batch.
    def meta_put(self, key: bytes, value: bytes) -> None: ...

    def meta_delete(self, key: bytes) -> None: ...

    def meta_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The committed (key, value) pairs of ``metadata`` whose key starts with ``prefix``."""
        ...

    def recount(self, status: int, ids: list[bytes]) -> bool:
        """Recovery found exactly ``ids`` in ``status``: correct the kept count to that (staged);
        True if it was wrong."""
        ...
