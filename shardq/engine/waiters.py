"""Long-poll CLAIMs: who waits for work, in arrival order, and until when.

Rules:
1. A waiter is answered exactly once: with tasks when work becomes ready, or
   with an empty list at its deadline. ``done`` marks it answered (or cancelled
   by its closed connection); a done waiter is skipped wherever it is found.
2. Waiters are served in arrival order; one that gets nothing keeps its place.
3. This file does not take tasks: the engine passes ``serve`` a ``take`` that
   leases tasks for one waiter.
4. A waiter's callback runs inside another request's operation, so its failure
   is logged, never raised. The callback may call back into the engine (a closed
   connection releases what it was handed), so ``queue`` is read afresh each step.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shardq.task import Task

log = logging.getLogger("shardq.engine")

Deliver = Callable[[list[tuple[Task, bytes]]], None]


@dataclass(slots=True, eq=False)
class ClaimWaiter:
    """A long-poll CLAIM: answered by ``deliver`` exactly once."""

    worker_id: str
    max: int
    types: frozenset[str] | None
    deadline_ms: int
    deliver: Deliver
    done: bool = False
    # Set by the server of a multi-shard broker: answers with tasks another shard
    # leased (their wire form and payloads) when the waiter is served from there.
    on_remote: Callable[[list[dict[str, Any]], bytes], None] | None = None

    def cancel(self) -> None:
        self.done = True


def deliver(w: ClaimWaiter, got: list[tuple[Task, bytes]]) -> None:
    """Hand tasks to a waiter. Its callback runs inside another request's
    operation (a SUBMIT that made work ready), so its failure must not
    become that request's failure after the engine has changed state."""
    try:
        w.deliver(got)
    except Exception:
        log.exception("delivering %d task(s) to waiting claim of %s failed", len(got), w.worker_id)


class WaitingClaims:
    """The waiting claims of one shard, and their deadline heap."""

    __slots__ = ("queue", "deadlines", "seq")

    def __init__(self) -> None:
        self.queue: deque[ClaimWaiter] = deque()  # arrival order
        self.deadlines: list[tuple[int, int, ClaimWaiter]] = []  # (deadline_ms, seq, waiter)
        self.seq = 0

    def add(self, waiter: ClaimWaiter) -> None:
        self.queue.append(waiter)
        self.seq += 1
        heapq.heappush(self.deadlines, (waiter.deadline_ms, self.seq, waiter))

    def serve(self, ready: dict[str, list[int]],
              take: Callable[[ClaimWaiter], list[tuple[Task, bytes]]]) -> None:
        """Offer ready work to the waiters in order, while ``ready`` (the ready
        heaps) has any: a waiter that ``take`` finds tasks for is answered."""
        if not self.queue:
            return
        keep: deque[ClaimWaiter] = deque()
        while self.queue and ready:
            w = self.queue.popleft()
            if w.done:
                continue
            got = take(w)
            if got:
                w.done = True
                deliver(w, got)
            else:
                keep.append(w)
        keep.extend(self.queue)
        self.queue = keep

    def expire(self, now: int) -> None:
        """Answer the waiters whose deadline came with an empty list."""
        wh = self.deadlines
        while wh and wh[0][0] <= now:
            _, _, w = heapq.heappop(wh)
            if not w.done:
                w.done = True
                deliver(w, [])

    def next_deadline(self) -> int | None:
        return self.deadlines[0][0] if self.deadlines else None

    def waiting(self) -> int:
        """How many claims are waiting (not answered, not cancelled)."""
        return sum(1 for w in self.queue if not w.done)
