"""One shard's RocksDB: key layout, staged (group-committed) writes, scans.

Rules:
1. Every change is staged into the current WriteBatch and made visible to
   ``get`` at once through an overlay; nothing reaches disk until ``commit``,
   which writes the whole batch in one call. The shard acks only after it.
2. The status is inside the record; a record stays in its family (``live`` or
   ``done``, store/layout.py) as long as its status belongs there, and is
   rewritten in place. Only finishing (completed, cancelled) moves it, in the
   same batch as its index entry: never a partial update.
3. The store counts tasks per status as it changes them and persists the counts
   with every commit, so start-up need not scan finished tasks to count them.
4. A write that fails (a full disk, an I/O error) writes nothing: RocksDB applies
   a batch whole or not at all. ``commit`` then drops what was staged (batch,
   overlay, counts back to the last commit) and raises ``StoreWriteError``; the
   caller rebuilds whatever it kept in memory from the store (Engine.reload).
5. A data dir of an older SCHEMA_VERSION is migrated in place when it is opened
   (``init_layout``, store/migrate.py), before anything else reads it.

The key layout and SCHEMA_VERSION are in ``store/layout.py`` (shared with store/memory.py).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import rocksdict as rd

from shardq.store.layout import (
    ALL_CFS,
    COUNTS,
    DONE,
    FAMILY_OF,
    IDX,
    INDEX_TAGS,
    LIVE,
    SCHEMA_VERSION,
    U64,
    finished_key,
    index_key,
    type_key,
)
from shardq.store.migrate import drop_old_families, migrate
from shardq.task import (
    CANCELLED,
    COMPLETED,
    DEAD_LETTER,
    FAILED,
    IN_PROGRESS,
    INLINE_PAYLOAD_MAX,
    PENDING,
    Task,
)

log = logging.getLogger("shardq.store")


class StoreError(Exception):
    """The data dir cannot be used as it is (schema, shard count, corruption)."""


class StoreWriteError(Exception):
    """A RocksDB write failed (no space left, an I/O error); nothing of it was written."""


@dataclass(frozen=True, slots=True)
class StoreSettings:
    sync: str = "interval"  # always | interval | none
    enable_wal: bool = True
    compression: str = "lz4"
    compaction_style: str = "level"
    write_buffer_size: int = 64 * 1024 * 1024
    max_write_buffer_number: int = 3
    level0_file_num_compaction_trigger: int = 4
    periodic_compaction_seconds: int = 86400
    block_cache_size: int = 128 * 1024 * 1024


class Store:
    """A shard's tasks in RocksDB. Not thread-safe: one event loop owns it."""

    def __init__(self, path: str, settings: StoreSettings | None = None) -> None:
        self.path = path
        self.settings = settings or StoreSettings()
        os.makedirs(path, exist_ok=True)
        self._cache = rd.Cache(self.settings.block_cache_size)
        opts = self._options()
        # RocksDB opens a DB only with every family it has: those of an older layout too,
        # until the migration (store/migrate.py) drops them.
        names = list(ALL_CFS)
        if os.path.exists(os.path.join(path, "CURRENT")):
            try:
                names += [n for n in rd.Rdict.list_cf(path) if n not in names and n != "default"]
            except Exception as exc:
                raise StoreError(f"{path}: cannot list the column families: {exc}") from exc
        cf_opts = {name: self._options() for name in names}
        try:
            self.db = rd.Rdict(path, options=opts, column_families=cf_opts)
        except Exception as exc:  # rocksdict raises a bare Exception (lock held, corruption)
            hint = " (is another shardq using this data dir?)" if "lock" in str(exc).lower() else ""
            raise StoreError(f"{path}: cannot open RocksDB: {exc}{hint}") from exc
        self.family_names = names
        self._cf = {name: self.db.get_column_family_handle(name) for name in names}
        self._views = {name: self.db.get_column_family(name) for name in names}
        self._live, self._done, self._idx = self._views[LIVE], self._views[DONE], self._views[IDX]
        self._fam_cf = [self._cf[name] for name in FAMILY_OF]  # by status code
        self._fam_view = [self._views[name] for name in FAMILY_OF]
        self._write_opts = rd.WriteOptions()
        self._write_opts.sync = self.settings.sync == "always"
        self._write_opts.disable_wal = not self.settings.enable_wal
        self._batch = rd.WriteBatch(raw_mode=True)
        self._overlay: dict[bytes, Task | None] = {}
        self._overlay_payloads: dict[bytes, bytes] = {}
        self._overlay_results: dict[bytes, bytes] = {}
        self.staged = 0  # mutations waiting for commit
        # Written to the WAL since the last sync_wal(): set by commit() after its write, cleared
        # by sync_wal() before its fsync, so a write racing the fsync is synced next time.
        self.wal_unsynced = False
        self.counts = self._load_counts()
        self._committed_counts = list(self.counts)  # what a failed commit goes back to
        self.last_commit_bytes = 0
        self.migrated: dict[str, float] | None = None  # what init_layout migrated, if it did
        if self.settings.periodic_compaction_seconds:
            for name in ALL_CFS:
                self._views[name].set_options(
                    {"periodic_compaction_seconds": str(self.settings.periodic_compaction_seconds)})

    def _options(self) -> rd.Options:
        s = self.settings
        o = rd.Options(raw_mode=True)
        # Reads by id are random (ids are random UUIDs): bloom filters let a get skip
        # SST files without the key, and one block cache shared by every family keeps
        # hot blocks decompressed. Measured: without them a CLAIM's read of a flushed
        # pending record cost ~15 us (docs/benchmarks.md).
        table = rd.BlockBasedOptions()
        table.set_block_cache(self._cache)
        table.set_bloom_filter(10, False)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        o.set_block_based_table_factory(table)
        o.create_if_missing(True)
        o.create_missing_column_families(True)
        o.set_compression_type(getattr(rd.DBCompressionType, s.compression)())
        o.set_compaction_style(getattr(rd.DBCompactionStyle, s.compaction_style)())
        o.set_write_buffer_size(s.write_buffer_size)
        o.set_max_write_buffer_number(s.max_write_buffer_number)
        o.set_level_zero_file_num_compaction_trigger(s.level0_file_num_compaction_trigger)
        return o

    # -- metadata ---------------------------------------------------------

    def meta_get(self, key: bytes) -> bytes | None:
        return self._views["metadata"].get(key)

    def meta_put(self, key: bytes, value: bytes) -> None:
        self._batch.put(key, value, self._cf["metadata"])
        self.staged += 1

    def meta_delete(self, key: bytes) -> None:
        self._batch.delete(key, self._cf["metadata"])
        self.staged += 1

    def meta_items(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Committed metadata keys starting with ``prefix`` (schedules: engine/schedules.py)."""
        it = self._views["metadata"].iter()
        it.seek(prefix)
        while it.valid() and it.key().startswith(prefix):
            yield it.key(), it.value()
            it.next()

    def init_layout(self, shard: int, shards: int) -> None:
        """Record (new dir) or check (existing dir) the schema and shard identity; migrate a
        data dir of an older schema in place (store/migrate.py)."""
        version = self.meta_get(b"schema_version")
        if version is None:
            self.meta_put(b"schema_version", str(SCHEMA_VERSION).encode())
            self.meta_put(b"shard", str(shard).encode())
            self.meta_put(b"shards", str(shards).encode())
            self.meta_put(b"created_ms", str(int(time.time() * 1000)).encode())
            self.commit()
            return
        if int(version) > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {int(version)} is newer than this "
                             f"shardq understands ({SCHEMA_VERSION}); upgrade shardq")
        recorded = (int(self.meta_get(b"shard") or b"-1"), int(self.meta_get(b"shards") or b"-1"))
        if recorded != (shard, shards):
            raise StoreError(f"{self.path}: holds shard {recorded[0]} of {recorded[1]}, "
                             f"opened as shard {shard} of {shards}")
        if int(version) < SCHEMA_VERSION:
            self.migrated = migrate(self, int(version))
            log.info("migrated %s from schema version %d to %d: %d tasks in %.2f s", self.path,
                     int(version), SCHEMA_VERSION, self.migrated["tasks"], self.migrated["seconds"])
        elif len(self.family_names) > len(ALL_CFS):  # a migration stopped after its version
            drop_old_families(self)

    def _load_counts(self) -> list[int]:
        raw = self._views["metadata"].get(b"counts")
        return list(COUNTS.unpack(raw)) if raw else [0] * 6

    # -- reads (overlay first) ----------------------------------------------

    def _record(self, raw_id: bytes) -> bytes | None:
        data = self._live.get(raw_id)
        return self._done.get(raw_id) if data is None else data

    def status_of(self, raw_id: bytes) -> int | None:
        if raw_id in self._overlay:
            t = self._overlay[raw_id]
            return None if t is None else t.status
        data = self._record(raw_id)
        return None if data is None else data[1]  # the status byte (task.py)

    def get(self, raw_id: bytes) -> Task | None:
        if raw_id in self._overlay:
            return self._overlay[raw_id]
        data = self._record(raw_id)
        return None if data is None else Task.decode(raw_id, data)

    def get_in(self, status: int, raw_id: bytes) -> Task | None:
        """The task if it is in ``status`` (one read: the family that status lives in)."""
        if raw_id in self._overlay:
            t = self._overlay[raw_id]
            return t if t is not None and t.status == status else None
        data = self._fam_view[status].get(raw_id)
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
        return self._views["payloads"].get(task.id) or b""

    def get_result(self, raw_id: bytes) -> bytes:
        r = self._overlay_results.get(raw_id)
        if r is not None:
            return r
        return self._views["results"].get(raw_id) or b""

    # -- staged writes -------------------------------------------------------

    def insert(self, task: Task, payload: bytes) -> None:
        """A new task: record, payload and its index entries, in the current batch."""
        b, rid = self._batch, task.id
        task.payload_len = len(payload)  # the bytes are the truth; decode relies on it
        if len(payload) <= INLINE_PAYLOAD_MAX:
            task.inline_payload = payload
        else:
            b.put(rid, payload, self._cf["payloads"])
            self._overlay_payloads[rid] = payload
        b.put(rid, task.encode(), self._fam_cf[task.status])
        idx = self._cf[IDX]
        b.put(type_key(task), b"", idx)
        fk = finished_key(task)
        if fk is not None:
            b.put(fk, b"", idx)
        self._overlay[rid] = task
        self.counts[task.status] += 1
        self.staged += 1

    def update(self, task: Task, old_status: int, old_index_key: bytes | None = None) -> None:
        """Rewrite a task's record in place, or move it to ``done`` when it finished.

        ``old_index_key`` is the task's index key before the change (from ``index_key``),
        so that a moved entry is deleted in the same batch."""
        b, rid = self._batch, task.id
        if old_status != task.status:
            if FAMILY_OF[old_status] != FAMILY_OF[task.status]:
                b.delete(rid, self._fam_cf[old_status])
            self.counts[old_status] -= 1
            self.counts[task.status] += 1
        b.put(rid, task.encode(), self._fam_cf[task.status])
        new_fk = finished_key(task)
        if new_fk != old_index_key:
            if old_index_key is not None:
                b.delete(old_index_key, self._cf[IDX])
            if new_fk is not None:
                b.put(new_fk, b"", self._cf[IDX])
        self._overlay[rid] = task
        self.staged += 1

    index_key = staticmethod(index_key)

    def put_result(self, raw_id: bytes, result: bytes) -> None:
        self._batch.put(raw_id, result, self._cf["results"])
        self._overlay_results[raw_id] = result
        self.staged += 1

    def index_put(self, key: bytes, present: bool = True) -> None:
        """Stage an idx key of an index the store does not keep itself (idx_unique: its tag
        first), or its removal."""
        if present:
            self._batch.put(key, b"", self._cf[IDX])
        else:
            self._batch.delete(key, self._cf[IDX])
        self.staged += 1

    def delete(self, task: Task) -> None:
        """Remove a task and everything about it (retention)."""
        b, cf, rid = self._batch, self._cf, task.id
        b.delete(rid, self._fam_cf[task.status])
        b.delete(type_key(task), cf[IDX])
        fk = finished_key(task)
        if fk is not None:
            b.delete(fk, cf[IDX])
        b.delete(rid, cf["payloads"])
        b.delete(rid, cf["results"])
        self._overlay[rid] = None
        self.counts[task.status] -= 1
        self.staged += 1

    def commit(self) -> int:
        """Write everything staged as one batch (WAL on); returns the mutation count."""
        n = self.staged
        if not n:
            return 0
        self._batch.put(b"counts", COUNTS.pack(*self.counts), self._cf["metadata"])
        self.last_commit_bytes = self._batch.size_in_bytes()
        try:
            self.db.write(self._batch, self._write_opts)
        except Exception as exc:  # rocksdict raises a bare Exception ("IO error: No space ...")
            self.discard()
            raise StoreWriteError(f"{self.path}: writing {n} mutation(s) failed: {exc}") from exc
        self.wal_unsynced = not self._write_opts.sync
        self._committed_counts = list(self.counts)
        self._reset_staged()
        return n

    def discard(self) -> int:
        """Drop everything staged since the last commit (after a failed write); how much."""
        n = self.staged
        self.counts[:] = self._committed_counts  # in place: PartitionedStore hands this list out
        self._reset_staged()
        return n

    def _reset_staged(self) -> None:
        # A fresh batch every time: rocksdict consumes the one it writes, even when the
        # write fails (reusing it fails every later write with "batch is already consumed").
        self._batch = rd.WriteBatch(raw_mode=True)
        self._overlay.clear()
        self._overlay_payloads.clear()
        self._overlay_results.clear()
        self.staged = 0

    def probe(self) -> None:
        """Write one small record outside the staged batch: raises StoreWriteError while
        writes fail (the shard's check for when the disk is writable again)."""
        batch = rd.WriteBatch(raw_mode=True)
        batch.put(b"probe_ms", U64.pack(int(time.time() * 1000)), self._cf["metadata"])
        try:
            self.db.write(batch, self._write_opts)
        except Exception as exc:
            raise StoreWriteError(f"{self.path}: {exc}") from exc

    def sync_wal(self) -> bool:
        """fsync the WAL (persistence.sync = interval) when anything was written since the last
        time; returns whether it did (an idle shard costs no fsync)."""
        if not self.wal_unsynced:
            return False
        self.wal_unsynced = False
        try:
            self.db.flush_wal(True)
        except Exception as exc:
            self.wal_unsynced = True  # synced next time, once it can be
            raise StoreWriteError(f"{self.path}: WAL fsync failed: {exc}") from exc
        return True

    # -- scans (bounded; callers resume from the returned position) ----------

    def scan_status(self, status: int, after: bytes | None,
                    max_keys: int) -> Iterator[tuple[bytes, Task | None]]:
        """The family that holds ``status``, in id order, strictly after ``after``: every id
        looked at (at most ``max_keys``), with its task when it has ``status`` (else None:
        the family holds other statuses too)."""
        it = self._fam_view[status].iter()
        if after is None:
            it.seek_to_first()
        else:
            it.seek(after)
            if it.valid() and it.key() == after:
                it.next()
        n = 0
        decode = Task.decode
        while it.valid() and n < max_keys:
            key, data = it.key(), it.value()
            yield key, (decode(key, data) if data[1] == status else None)
            it.next()
            n += 1

    def scan_index(self, index: str, prefix: bytes, after: bytes | None, max_keys: int,
                   upper: bytes | None = None) -> Iterator[bytes]:
        """Keys of ``index`` (``idx_type``, ``idx_finished``) starting with ``prefix`` (and
        below ``upper``), strictly after ``after``; without idx's tag byte."""
        tag = INDEX_TAGS[index]
        start = tag + (after if after is not None else prefix)
        full, stop = tag + prefix, None if upper is None else tag + upper
        it = self._idx.iter()
        it.seek(start)
        if after is not None and it.valid() and it.key() == start:
            it.next()
        n = 0
        while it.valid() and n < max_keys:
            key = it.key()
            if not key.startswith(full) or (stop is not None and key >= stop):
                return
            yield key[1:]
            it.next()
            n += 1

    def iter_live(self) -> Iterator[tuple[bytes, bytes]]:
        """Every committed (id, record) of ``live`` (pending, in_progress, failed,
        dead_letter; the status is ``record[1]``): for recovery only. The scan does not fill
        the block cache (it would evict what serving needs and hold ~100 MiB of RSS per
        million tasks for nothing)."""
        scan = rd.ReadOptions()
        scan.fill_cache(False)
        return self._live.items(read_opt=scan)  # type: ignore[no-any-return]

    def count_keys(self, cf: str) -> int:
        return sum(1 for _ in self._views[cf].keys())

    # -- maintenance ---------------------------------------------------------

    def compact(self) -> None:
        for name in ALL_CFS:
            self._views[name].compact_range(None, None)

    def property_int(self, name: str) -> int:
        total = 0
        for cf in ALL_CFS:
            v = self._views[cf].property_int_value(name)
            total += v or 0
        return total

    def close(self) -> None:
        """Write and sync what is staged, then close the DB. A failing disk does not keep the
        DB (and its LOCK) open: the error is raised after the close."""
        error: Exception | None = None
        try:
            self.commit()
            if self.settings.sync != "none" and self.settings.enable_wal:
                self.sync_wal()
        except Exception as exc:
            error = exc
        try:
            self.db.close()
        except Exception as exc:  # "Writer has previous error" after a failed write
            error = error or exc
        # Column-family views and handles keep the DB (and its LOCK) alive until
        # they are dropped, so a reopen in the same process needs them gone.
        self._cf.clear()
        self._views.clear()
        self._fam_cf.clear()
        self._fam_view.clear()
        del self._live, self._done, self._idx
        self._batch = None  # type: ignore[assignment]
        gc.collect()
        if error is not None:
            raise StoreWriteError(f"{self.path}: closing: {error}") from error


__all__ = ["Store", "StoreSettings", "StoreError", "StoreWriteError", "SCHEMA_VERSION", "ALL_CFS",
           "PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "DEAD_LETTER", "CANCELLED"]
