"""Dependencies between tasks: what happens to the tasks waiting on one when it finishes.

`EngineDependencies` is a mixin of `Engine` (engine.py), like reads.py and maintenance.py: the
shard calls one engine object. Every status change still goes through ``Engine._set_status``;
the waiters themselves (who waits on whom) are kept by ``deps.Dependencies``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from shardq.engine.deps import Dependencies
from shardq.engine.ready import ReadyQueue
from shardq.engine.storage import Store
from shardq.task import CANCELLED, COMPLETED, DEAD_LETTER, PENDING, Task, id_to_str


class EngineDependencies:
    store: Store
    _ready: ReadyQueue
    _deps: Dependencies

    if TYPE_CHECKING:  # defined by Engine (engine.py)
        def _count(self, name: str, n: int = 1) -> None: ...
        def _set_status(self, task: Task, event: str, now: int, **changes: Any) -> None: ...
        def _serve_waiters(self, now: int) -> None: ...
        def _note_dependencies_met(self, task: Task, last: bytes | None, now: int) -> None: ...

    # -- dependencies --------------------------------------------------------

    def _dependents_ready(self, children: Iterable[bytes], now: int, parent: bytes | None = None) -> None:
        """Dependents whose last dependency (``parent``) completed: ready (or scheduled) if
        still pending."""
        for child in children:
            task = self.store.get(child)
            if task is not None and task.status == PENDING:
                self._note_dependencies_met(task, parent, now)
                self._ready.enqueue(task, now)

    def remote_waits(self) -> list[bytes]:
        """Dependencies owned by another shard that pending tasks here wait on."""
        owns = self.store.owns
        return [d for d in self._deps.waiting_on if not owns(d)]

    def remote_dependency_finished(self, dep: bytes, status: int, now: int) -> None:
        """Another shard's task that tasks here depend on reached ``status``."""
        if status == COMPLETED:
            children = self._deps.completed(dep)
            if children:
                self._dependents_ready(children, now, dep)
                self._serve_waiters(now)
        elif status in (DEAD_LETTER, CANCELLED):
            self._dependency_failed(dep, now)

    def _dependency_failed(self, dep: bytes, now: int) -> None:
        """Cascade: everything waiting on ``dep`` (transitively) goes to dead_letter."""

        def dead_letter(parent: bytes, child: bytes) -> bool:
            task = self.store.get(child)
            if task is None or task.status != PENDING:
                return False
            self._set_status(task, "dependency_failed", now,
                             error=f"dependency failed: {id_to_str(parent)}")
            self._count("dead_lettered")
            return True

        self._deps.cascade(dep, dead_letter)
