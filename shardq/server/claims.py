"""CLAIM on a shard of a multi-shard broker: which shard a claim takes from, and when it waits.

Rules:
1. Strict priority (then FIFO) holds inside a shard. Across shards it holds by tier: each shard
   reports the best ready tier of each task type (the coordinator's STATE), and a claim whose own
   shard's best tier is lower than another's takes from that shard first, then tops up locally.
2. A claim that finds nothing here asks the other shards (those reported to have work of its
   types first) before it answers empty or waits. The owner of a task grants its lease and stays
   its owner; this shard only relays the answer (routing.claim_remote).
3. A waiting claim is woken by its own shard's work (the engine's waiters) or by a STATE saying
   another shard has some (``offer_to_waiters``).
4. A caller that went away while its claim was in flight gets nothing: the leases granted for it
   are released at once, here or at their owners, never left to expire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardq.clock import now_ms
from shardq.protocol.frames import MAX_FRAME
from shardq.server import routing
from shardq.specs import ResultItem
from shardq.task import Task

if TYPE_CHECKING:
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.claims")

# A claim tops up from other shards only while its local answer leaves room for theirs.
TOP_UP_BELOW = MAX_FRAME // 2
# What one task's header takes in a CLAIM answer at most (ids, type, error text, numbers).
TASK_HEADER_BUDGET = 2048


@dataclass(slots=True)
class Claimed:
    """A CLAIM's answer: the leased tasks in wire form and their payloads, concatenated in order."""

    tasks: list[dict[str, Any]]
    payloads: bytes


class Caller:
    """What the operations layer needs of whoever asked, whatever the transport: whether it is
    still there (``closing``), and what to cancel when it goes (``waiters``: the futures of its
    waiting claims; the transport calls ``hang_up`` when its connection closes)."""

    def __init__(self) -> None:
        self.closing = False
        self.waiters: set[asyncio.Future[Claimed]] = set()

    def hang_up(self) -> None:
        self.closing = True
        waiters, self.waiters = self.waiters, set()
        for fut in waiters:
            fut.cancel()


def release(task: Task) -> ResultItem:
    return ResultItem(task.id, task.attempt, "released")


class Claims:
    """The claim policy of one shard; ``routed`` is False for a single shard and for claims
    forwarded by another shard (those are about this shard's tasks alone)."""

    def __init__(self, shard: ShardServer, routed: bool) -> None:
        self.shard = shard
        self.engine = shard.engine
        self.routed = routed

    def claim(self, caller: Caller, worker_id: str, max_tasks: int, wait_ms: int,
              types: frozenset[str] | None) -> Claimed | Awaitable[Claimed | None]:
        engine = self.engine
        if not self.routed:
            got = engine.claim(worker_id, max_tasks, types, now_ms())
            if got or wait_ms <= 0:
                return self.answer(got)
            return self._wait(caller, worker_id, max_tasks, wait_ms, types)
        better = self._better_elsewhere(types)
        if better:
            # Another shard reported work of a higher priority tier: serve that first.
            return self._claim_better(caller, worker_id, max_tasks, wait_ms, types, better)
        got = engine.claim(worker_id, max_tasks, types, now_ms())
        if got:
            if len(got) < max_tasks and self._others_have(types) and \
                    sum(t.payload_len for t, _ in got) < TOP_UP_BELOW:
                # Fill the claim from shards that reported ready work of these types.
                return self._top_up(caller, worker_id, got, max_tasks - len(got), types)
            return self.answer(got)
        # Nothing here: ask the other shards before answering empty or waiting.
        return self._claim_across(caller, worker_id, max_tasks, wait_ms, types, now_ms() + wait_ms)

    def answer(self, got: list[tuple[Task, bytes]]) -> Claimed:
        part = self.shard.store.part_index
        return Claimed([t.to_wire(part(t.id)) for t, _ in got], b"".join(p for _, p in got))

    def _give_back(self, worker_id: str, got: list[tuple[Task, bytes]]) -> None:
        if got:
            self.engine.result(worker_id, [release(t) for t, _ in got], now_ms())
            self.shard.mutated()

    def _better_elsewhere(self, types: frozenset[str] | None) -> list[int]:
        """Shards whose reported best ready tier (of these types) beats this shard's best,
        best first; empty when this shard has nothing ready (the plain cross-shard path)."""
        others = self.shard.others_ready
        if not others:
            return []
        local = self.engine.best_rank(types)
        if local < 0:
            return []
        ranked = []
        for shard, ready in others.items():
            rank = max((r for t, r in ready.items() if types is None or t in types), default=-1)
            if rank > local:
                ranked.append((rank, shard))
        return [shard for _, shard in sorted(ranked, reverse=True)]

    def _others_have(self, types: frozenset[str] | None) -> bool:
        return any(types is None or not types.isdisjoint(t) for t in self.shard.others_ready.values())

    async def _remote(self, worker_id: str, max_tasks: int, types: frozenset[str] | None,
                      shards: list[int] | None = None) -> tuple[list[dict[str, Any]], bytes]:
        try:
            return await routing.claim_remote(self.shard, worker_id, max_tasks, types, shards)
        except Exception:
            log.exception("cross-shard claim failed")
            return [], b""

    async def _claim_better(self, caller: Caller, worker_id: str, max_tasks: int, wait_ms: int,
                            types: frozenset[str] | None, shards: list[int]) -> Claimed | None:
        tasks, blob = await self._remote(worker_id, max_tasks, types, shards)
        got = []
        if len(tasks) < max_tasks and len(blob) < TOP_UP_BELOW and not caller.closing:
            got = self.engine.claim(worker_id, max_tasks - len(tasks), types, now_ms())
            if got:
                self.shard.mutated()
        if caller.closing:
            self._give_back(worker_id, got)
            if tasks:
                await routing.release_remote(self.shard, worker_id, tasks)
            return None
        if not tasks and not got:
            return await self._claim_across(caller, worker_id, max_tasks, wait_ms, types,
                                            now_ms() + wait_ms)
        local = self.answer(got)
        return Claimed(tasks + local.tasks, blob + local.payloads)

    async def _top_up(self, caller: Caller, worker_id: str, got: list[tuple[Task, bytes]], more: int,
                      types: frozenset[str] | None) -> Claimed | None:
        shards = [i for i, t in self.shard.others_ready.items() if types is None or not types.isdisjoint(t)]
        tasks, blob = await self._remote(worker_id, more, types, shards)
        local = self.answer(got)
        if tasks and len(local.payloads) + len(blob) + TASK_HEADER_BUDGET * (len(got) + len(tasks)) > MAX_FRAME:
            self.shard.spawn(routing.release_remote(self.shard, worker_id, tasks))  # would not fit
            tasks, blob = [], b""
        if caller.closing:
            self._give_back(worker_id, got)
            if tasks:
                await routing.release_remote(self.shard, worker_id, tasks)
            return None
        local.tasks.extend(tasks)
        return Claimed(local.tasks, local.payloads + blob)

    async def _claim_across(self, caller: Caller, worker_id: str, max_tasks: int, wait_ms: int,
                            types: frozenset[str] | None, deadline: int) -> Claimed | None:
        tasks, blob = await self._remote(worker_id, max_tasks, types)
        if tasks:
            if caller.closing:
                await routing.release_remote(self.shard, worker_id, tasks)
                return None
            return Claimed(tasks, blob)
        if caller.closing:
            return None
        left = max(0, deadline - now_ms()) if wait_ms else 0
        got = self.engine.claim(worker_id, max_tasks, types, now_ms())
        if got or left <= 0:
            return self.answer(got)
        return await self._wait(caller, worker_id, max_tasks, left, types)

    def _wait(self, caller: Caller, worker_id: str, max_tasks: int, wait_ms: int,
              types: frozenset[str] | None) -> asyncio.Future[Claimed]:
        """Wait for work (nothing was ready when asked). The future is cancelled when the
        caller hangs up; work that reaches it after that goes back at once."""
        assert self.shard.loop is not None
        fut: asyncio.Future[Claimed] = self.shard.loop.create_future()

        def deliver(got: list[tuple[Task, bytes]]) -> None:
            caller.waiters.discard(fut)
            if fut.done() or caller.closing:
                self._give_back(worker_id, got)  # the caller is gone: don't lose a lease's time
                return
            fut.set_result(self.answer(got))

        def deliver_remote(tasks: list[dict[str, Any]], blob: bytes) -> None:
            caller.waiters.discard(fut)
            if fut.done() or caller.closing:
                self.shard.spawn(routing.release_remote(self.shard, worker_id, tasks))
                return
            fut.set_result(Claimed(tasks, blob))

        waiter = self.engine.wait_for_claim(worker_id, max_tasks, types, wait_ms, now_ms(), deliver)
        if waiter is not None:
            if self.routed:
                waiter.on_remote = deliver_remote
            caller.waiters.add(fut)
            fut.add_done_callback(lambda f: waiter.cancel() if f.cancelled() else None)
            self.shard.mutated()  # re-arm the timer for the waiter's deadline
        return fut

    # -- waiting claims served from other shards ---------------------------------------------

    def offer_to_waiters(self) -> None:
        """Another shard has ready work (a STATE said so): offer it to the claims waiting here."""
        shard = self.shard
        for w in self.engine.waiting():
            if id(w) in shard.remote_claims or w.on_remote is None:
                continue
            shards = [i for i, types in shard.others_ready.items()
                      if w.types is None or not w.types.isdisjoint(types)]
            if shards:
                shard.remote_claims.add(id(w))
                shard.spawn(self._remote_claim_for(w, shards))

    async def _remote_claim_for(self, w: Any, shards: list[int]) -> None:
        try:
            tasks, blob = await routing.claim_remote(self.shard, w.worker_id, w.max, w.types, shards)
        finally:
            self.shard.remote_claims.discard(id(w))
        if not tasks:
            return
        if w.done:
            await routing.release_remote(self.shard, w.worker_id, tasks)  # answered meanwhile
            return
        w.done = True
        w.on_remote(tasks, blob)
