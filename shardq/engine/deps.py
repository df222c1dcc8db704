"""Dependency waiters: pending tasks that wait for other tasks to complete.

Rules:
1. This file only counts: which tasks wait on which, and how many of each
   waiting task's dependencies are not completed yet. It never reads the store
   and never changes a status: it answers which dependents a completion made
   ready (``completed``), and walks a failed dependency's dependents for the
   engine to dead-letter (``cascade``).
2. A task is in ``unmet`` only while it is pending and waits: the engine drops
   it from ``unmet`` whenever it leaves pending (cancelled, dead-lettered...).
   ``waiting_on`` is lazy: a dependent that is no longer in ``unmet`` is skipped.
"""

from __future__ import annotations

from collections.abc import Callable


class Dependencies:
    """The dependency waiters of one shard."""

    __slots__ = ("waiting_on", "unmet")

    def __init__(self) -> None:
        self.waiting_on: dict[bytes, list[bytes]] = {}  # dependency -> dependents
        self.unmet: dict[bytes, int] = {}  # dependent -> dependencies not completed yet

    def wait(self, child: bytes, unmet: list[bytes]) -> None:
        """``child`` (pending) waits until every one of ``unmet`` completed."""
        self.unmet[child] = len(unmet)
        waiting_on = self.waiting_on
        for d in unmet:
            waiting_on.setdefault(d, []).append(child)

    def completed(self, dep: bytes) -> list[bytes] | tuple[()]:
        """``dep`` completed: the dependents it was the last unmet dependency of."""
        children = self.waiting_on.pop(dep, None)
        if children is None:
            return ()
        unmet = self.unmet
        ready = []
        for child in children:
            left = unmet.get(child)
            if left is None:
                continue
            if left > 1:
                unmet[child] = left - 1
                continue
            del unmet[child]
            ready.append(child)
        return ready

    def cascade(self, dep: bytes, dead_letter: Callable[[bytes, bytes], bool]) -> None:
        """``dep`` will never complete: offer every task still waiting on it to
        ``dead_letter(parent, child)``, and transitively the dependents of each
        child that it dead-lettered (returned True for)."""
        stack = [dep]
        while stack:
            parent = stack.pop()
            for child in self.waiting_on.pop(parent, ()):
                if child not in self.unmet:
                    continue
                if dead_letter(parent, child):
                    stack.append(child)
