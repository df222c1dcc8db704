"""Task options: expiry and unique keys (docs/protocol.md, "Task options").

`EngineTaskOptions` is a mixin of `Engine` (engine.py), like workers.py and dependencies.py.
Every status change still goes through ``Engine._set_status``; a task without options (its
record's ``extras`` is None) never enters this file.

Rules:
1. Expiry. A task that has not started by its ``expires_at_ms`` is not run: it ends dead_letter
   with the error ``expired`` (the ``expire`` row of states.py), counted as ``expired``, and its
   dependents are dead-lettered as for any failed dependency. Two paths find it: a CLAIM that
   pops it (``_take`` skips and finishes it) and the schedule heap, which holds an entry at the
   expiry (``ReadyQueue.wake_at``), so it ends even when nobody claims. A task in_progress at its
   expiry runs to its end; if it comes back unfinished (failed with retries left, released,
   reclaimed) after its expiry, it is expired then. REQUEUE drops the expiry: the operator
   asked for it to run.
2. Unique keys. This shard owns the keys that hash to it (protocol/task_options.unique_owner);
   ``_unique`` maps (type, key) to the task holding it, mirrored durably in the store's
   ``idx_unique`` keys, staged in the same commit as the task, reloaded at start. A key is held
   while its task is not finished, and ``unique_window_ms`` after it finished; whether it still
   holds is read from the holder's record when asked, so finishing a task writes nothing more
   for a windowed key. A key with no window is released (index key removed) when its task
   finishes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardq.engine.ready import ReadyQueue
from shardq.engine.settings import EngineSettings
from shardq.engine.storage import Store
from shardq.specs import TaskOptions, TaskSpec
from shardq.task import FAILED, IN_PROGRESS, PENDING, TERMINAL, Task, new_ids

# The store's idx_unique keys: tag | type | 0x00 | key | 0x00 | id (store/layout.py).
UNIQUE_TAG = b"u"
_UNSTARTED = (PENDING, FAILED)


def unique_name(task_type: str, key: str) -> bytes:
    return task_type.encode() + b"\x00" + key.encode()


class EngineTaskOptions:
    store: Store
    s: EngineSettings
    _ready: ReadyQueue
    _unique: dict[bytes, bytes]

    if TYPE_CHECKING:  # defined by Engine (engine.py)
        def _count(self, name: str, n: int = 1) -> None: ...
        def _set_status(self, task: Task, event: str, now: int, **changes: Any) -> None: ...
        def _dependency_failed(self, dep: bytes, now: int) -> None: ...
        def submit(self, specs: list[TaskSpec], now: int, home: int | None = None,
                   remote_status: dict[bytes, int | None] | None = None,
                   check_depth: bool = True) -> list[bytes]: ...

    # -- SUBMIT -----------------------------------------------------------------------------

    def submit_with_options(self, specs: list[TaskSpec], now: int,
                            remote_status: dict[bytes, int | None] | None = None,
                            check_depth: bool = True) -> tuple[list[bytes], list[int]]:
        """``submit`` for a batch with task options: the ids, and the positions answered with
        the id of a task already holding their unique key (no new task for those)."""
        keep, dups = self._unique_resolve(specs, now)
        if not dups:
            return self.submit(specs, now, remote_status=remote_status, check_depth=check_depth), []
        ids: list[bytes] = [b""] * len(specs)
        if keep:
            for i, raw in zip(keep, self.submit([specs[i] for i in keep], now,
                                                remote_status=remote_status, check_depth=check_depth)):
                ids[i] = raw
        for i, raw in dups.items():
            ids[i] = raw
        self._count("unique_duplicates", len(dups))
        return ids, sorted(dups)

    def _unique_resolve(self, specs: list[TaskSpec], now: int) -> tuple[list[int], dict[int, bytes]]:
        """Which tasks of the batch to make (positions) and which are duplicates (position ->
        the id of the holder). A new unique task gets its id here, in this shard's partition,
        so that a second one with the same key in the batch can be answered with it."""
        keep: list[int] = []
        dups: dict[int, bytes] = {}
        in_batch: dict[bytes, bytes] = {}
        for i, spec in enumerate(specs):
            opts = spec.options
            if opts is None or opts.unique_key is None:
                keep.append(i)
                continue
            name = unique_name(spec.type, opts.unique_key)
            if spec.id is not None and self.store.status_of(spec.id) is not None:
                keep.append(i)  # a repeated SUBMIT of a task that exists: idempotent, as ever
                continue
            holder = in_batch.get(name) or self._unique.get(name)
            if holder is not None and holder != spec.id and (name in in_batch or self._holds(holder, now)):
                dups[i] = holder
                continue
            if spec.id is None:
                spec.id = new_ids(1, self.s.shard, self.s.shards)[0]
            in_batch[name] = spec.id
            keep.append(i)
        return keep, dups

    def _holds(self, holder: bytes, now: int) -> bool:
        """Whether the task ``holder`` still holds its unique key at ``now``."""
        task = self.store.get(holder)
        if task is None:
            return False  # deleted by retention
        if task.status not in TERMINAL:
            return True
        window = (task.extras or {}).get("unique_window_ms", 0)
        return bool(task.updated_ms + window > now)

    def _options_at_submit(self, task: Task, opts: TaskOptions, now: int) -> None:
        """A new task with options, before it is stored: its extras, its expiry entry, its key."""
        task.extras = opts.extras() or None
        if opts.expires_at_ms is not None:
            self._ready.wake_at(opts.expires_at_ms, task)
        if opts.unique_key is not None:
            self._hold_key(task, unique_name(task.type, opts.unique_key))

    def _hold_key(self, task: Task, name: bytes) -> None:
        old = self._unique.get(name)
        if old is not None and old != task.id:
            self.store.index_put(UNIQUE_TAG + name + b"\x00" + old, False)
        self._unique[name] = task.id
        self.store.index_put(UNIQUE_TAG + name + b"\x00" + task.id)

    # -- transitions (called by Engine._set_status for a task with extras) -------------------

    def _options_transition(self, task: Task, old: int, new: int, event: str, now: int) -> None:
        extras = task.extras
        assert extras is not None
        key = extras.get("unique_key")
        if event == "requeue":
            extras.pop("expires_at_ms", None)  # the operator wants it run (rule 1)
            if key is not None:
                name = unique_name(task.type, key)
                holder = self._unique.get(name)
                if holder is None or holder == task.id or not self._holds(holder, now):
                    self._hold_key(task, name)
            if not extras:
                task.extras = None
            return
        if new in TERMINAL:
            if key is not None and not extras.get("unique_window_ms"):
                name = unique_name(task.type, key)
                if self._unique.get(name) == task.id:
                    del self._unique[name]
                    self.store.index_put(UNIQUE_TAG + name + b"\x00" + task.id, False)
            return
        if old == IN_PROGRESS and new in _UNSTARTED:
            expires = extras.get("expires_at_ms")
            if expires is not None and expires <= now:
                # Back unfinished after its expiry: the tick expires it (its entry was used).
                self._ready.wake_at(now, task)

    # -- expiry -------------------------------------------------------------------------------

    def _expire_if_due(self, task: Task, now: int) -> bool:
        """Expire ``task`` if it has not started and its expiry has come; whether it did."""
        extras = task.extras
        expires = extras.get("expires_at_ms") if extras is not None else None
        if expires is None or expires > now or task.status not in _UNSTARTED:
            return False
        self._set_status(task, "expire", now, error="expired")
        self._count("expired")
        self._count("dead_lettered")
        self._dependency_failed(task.id, now)
        return True

    # -- recovery -----------------------------------------------------------------------------

    def _recover_options(self, task: Task, schedule: list[int], key_of: Any) -> None:
        """A live task read at start (not dead_letter): its expiry entry."""
        expires = (task.extras or {}).get("expires_at_ms")
        if expires is not None and task.status in (PENDING, FAILED, IN_PROGRESS):
            schedule.append(key_of(expires, task.seq, task.id))

    def _load_unique(self) -> int:
        """The unique keys held, from the store's committed idx_unique keys; how many."""
        self._unique = {}
        for key in self.store.scan_index("idx_unique", b"", None, 1 << 62):
            self._unique[key[:-17]] = key[-16:]
        return len(self._unique)
