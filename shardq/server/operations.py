"""Every operation a client can ask of a shard, for every transport: TCP today, HTTP and gRPC next.

Rules:
1. Everything a request does beyond decoding and encoding lives here: the permission it needs,
   where its tasks live (here, or at their owners over the mesh: routing.py) and the claim policy
   (claims.py). A transport turns its bytes into the typed arguments below, calls one method, and
   turns the result, or the WireError raised (errors.py), back into bytes.
2. A method returns its result, or an awaitable of it when the request must wait or cross
   shards. Work on this shard's own tasks is never awaited: it joins this loop turn's group
   commit (shard.py) and costs no task switch, which keeps the TCP hot path as fast as before.
3. ``Identity`` is who asks; every method checks the permission it needs first (PERMISSION).
4. ``forwarded`` operations serve requests another shard sent over the mesh: always about this
   shard's own tasks, never routed again, never counted as a worker's own traffic.
5. While the shard's disk refuses writes, an operation that would write here is refused with a
   retryable Unavailable before it changes anything (``check_writable``); reads go on. Below the
   free-space watermark only SUBMIT is refused (``check_submit_space``).

Where to add an operation: a method here (the logic, once), a parser in protocol/requests.py for
the wire form, and one line in each transport's dispatch table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from shardq.clock import now_ms
from shardq.config import PERMISSIONS
from shardq.errors import Forbidden, InvalidState, NotFound, TooLarge, Unauthorized, WireError
from shardq.protocol.frames import MAX_FRAME, MsgType
from shardq.server import routing
from shardq.server.claims import Caller, Claimed, Claims
from shardq.specs import ResultItem, TaskSpec
from shardq.task import STATUS_NAMES, id_to_str

if TYPE_CHECKING:
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.operations")

T = TypeVar("T")
Result = T | Awaitable[T]  # an answer now, or one to await (routed, or waiting)

ALL_PERMISSIONS = frozenset(PERMISSIONS)
# The permission each operation needs (``admin`` grants every one).
PERMISSION = {
    "submit": "submit", "claim": "claim", "result": "claim", "heartbeat": "claim",
    "register": "claim", "deregister": "claim", "query": "read", "list": "read", "stats": "read",
    "cancel": "admin", "requeue": "admin",
}
# A REQUEUE without ids runs in slices of this many record moves, the group commit between them.
REQUEUE_SLICE = 200
WORKER_KEYS = ("worker_id", "hostname", "pid", "types", "concurrency", "first_seen_ms", "last_seen_ms",
               "cpu_percent", "memory_rss", "memory_percent", "state")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who asks: the name of its API key (for logs) and what that key may do."""

    name: str
    permissions: frozenset[str]

    def require(self, operation: str) -> None:
        perm = PERMISSION.get(operation)
        if perm is not None and perm not in self.permissions and "admin" not in self.permissions:
            raise Forbidden(f"this API key lacks the '{perm}' permission for {operation}")


ANYONE = Identity("anonymous", ALL_PERMISSIONS)  # auth is off
PEER = Identity("peer", ALL_PERMISSIONS)  # another shard, over the mesh


@dataclass(slots=True)
class Queried:
    tasks: list[dict[str, Any] | None]  # wire form, None for an unknown id
    results: bytes  # the results of the tasks that have one, in order, when asked for


@dataclass(slots=True)
class Page:
    tasks: list[dict[str, Any]]
    cursor: str | None


class Operations:
    def __init__(self, shard: ShardServer, forwarded: bool = False) -> None:
        self.shard = shard
        self.engine = shard.engine
        self.forwarded = forwarded
        self.routed = shard.shards > 1 and shard.peers is not None and not forwarded
        self.claims = Claims(shard, self.routed)

    # -- identity --------------------------------------------------------------------------

    def authenticate(self, api_key: object) -> Identity:
        """The identity of a HELLO's ``api_key`` (anyone at all when auth is off)."""
        if self.forwarded:
            return PEER
        auth = self.shard.cfg.auth
        if not auth.enabled:
            return ANYONE
        match = next((k for k in auth.api_keys if k.key == api_key), None) if type(api_key) is str else None
        if match is None:
            raise Unauthorized("api_key is missing or not valid")
        return Identity(match.name, frozenset(match.permissions))

    def initial_identity(self) -> Identity | None:
        """Who a new connection is before its HELLO: nobody when auth is on."""
        return ANYONE if self.forwarded or not self.shard.cfg.auth.enabled else None

    # -- producers ---------------------------------------------------------------------------

    def submit(self, who: Identity, specs: list[TaskSpec]) -> Result[list[str]]:
        who.require("submit")
        self.shard.check_submit_space()
        if self.routed and not self._all_local(specs):
            return routing.submit(self.shard, specs)
        return [id_to_str(i) for i in self.engine.submit(specs, now_ms())]

    def store_part(self, specs: list[TaskSpec], remote_status: dict[bytes, int | None],
                   check_depth: bool) -> list[str]:
        """A forwarded SUBMIT: this shard's part of a batch another shard checked as a whole."""
        self.shard.check_submit_space()
        return [id_to_str(i) for i in self.engine.submit(specs, now_ms(), remote_status=remote_status,
                                                         check_depth=check_depth)]

    def _all_local(self, specs: list[TaskSpec]) -> bool:
        owns = self.shard.owns
        for spec in specs:
            if spec.id is not None and not owns(spec.id):
                return False
            for dep in spec.depends_on:
                if not owns(dep):
                    return False
        return True

    def query(self, who: Identity, ids: list[bytes], with_result: bool) -> Result[Queried]:
        who.require("query")
        if self.routed and not all(self.shard.owns(i) for i in ids):
            return self._routed_query(ids, with_result)
        if not with_result:
            part = self.shard.store.part_index
            return Queried([None if t is None else t.to_wire(part(t.id)) for t in self.engine.query(ids)], b"")
        wire, results = self.query_local(ids)
        return Queried(wire, _fits(b"".join(results), len(ids)))

    def query_local(self, ids: list[bytes]) -> tuple[list[dict[str, Any] | None], list[bytes]]:
        tasks = self.engine.query(ids)
        part = self.shard.store.part_index
        wire = [None if t is None else t.to_wire(part(t.id)) for t in tasks]
        results = [self.engine.store.get_result(t.id) if t is not None and t.result_len else b""
                   for t in tasks]
        return wire, results

    async def _routed_query(self, ids: list[bytes], with_result: bool) -> Queried:
        tasks, blob = await routing.query(self.shard, ids, with_result, self.query_local)
        return Queried(tasks, _fits(blob, len(ids)))

    def cancel(self, who: Identity, raw: bytes) -> Result[str]:
        """Cancel a task that has not started; its new status."""
        who.require("cancel")
        if self.routed and not self.shard.owns(raw):
            return routing.cancel(self.shard, raw)
        self.shard.check_writable()
        self.engine.cancel(raw, now_ms())
        return "cancelled"

    def list_tasks(self, who: Identity, status: int, task_type: str | None, min_priority: int,
                   max_priority: int, limit: int, cursor: str | None) -> Result[Page]:
        who.require("list")
        tasks, nxt = self.engine.list_tasks(status, task_type, min_priority, max_priority, limit, cursor)
        part = self.shard.store.part_index
        page = [t.to_wire(part(t.id)) for t in tasks]
        if not self.routed:
            return Page(page, nxt)
        header: dict[str, Any] = {"status": STATUS_NAMES[status], "min_priority": min_priority,
                                  "max_priority": max_priority, "limit": limit, "cursor": cursor}
        if task_type is not None:
            header["type"] = task_type
        return self._routed_list(header, limit, page, nxt)

    async def _routed_list(self, header: dict[str, Any], limit: int, page: list[dict[str, Any]],
                           nxt: str | None) -> Page:
        merged = await routing.list_tasks(self.shard, header, limit, (page, nxt))
        return Page(merged["tasks"], merged["cursor"])

    def requeue(self, who: Identity, ids: list[bytes] | None, status: int, task_type: str | None,
                limit: int) -> Result[dict[str, Any]]:
        """Dead-letter (or failed) tasks back to pending: these ids, or every one of ``status``
        (and ``task_type``) up to ``limit``; ``{"requeued": n, "results"?: [...]}``."""
        who.require("requeue")
        self.shard.check_writable()
        if ids is None:
            return self._requeue_scan(status, task_type, limit)
        if self.routed and not all(self.shard.owns(i) for i in ids):
            return routing.requeue_ids(self.shard, ids, self.requeue_local)
        results = self.requeue_local(ids)
        return {"requeued": sum(1 for r in results if "error" not in r), "results": results}

    def requeue_local(self, ids: list[bytes]) -> list[dict[str, Any]]:
        now = now_ms()
        results: list[dict[str, Any]] = []
        for raw in ids:
            sid = id_to_str(raw)
            try:
                self.engine.requeue(raw, now)
            except (NotFound, InvalidState) as err:
                results.append({"id": sid, "error": err.to_wire()})
            else:
                results.append({"id": sid, "status": "pending"})
        return results

    async def _requeue_scan(self, status: int, task_type: str | None, limit: int) -> dict[str, Any]:
        total = 0
        after: bytes | None = None
        while total < limit:
            # At most REQUEUE_SLICE per loop turn (each requeue is a record move); the group
            # commit runs between slices.
            n, after = self.engine.requeue_slice(status, task_type, min(limit - total, REQUEUE_SLICE),
                                                 after, now_ms())
            total += n
            self.shard.mutated()
            if after is None:
                break
            await asyncio.sleep(0)
        if self.routed and total < limit:
            total += await routing.requeue_elsewhere(self.shard, status, task_type, limit - total)
        return {"requeued": total}

    def stats(self, who: Identity, workers_detail: bool) -> Result[dict[str, Any]]:
        """GET_STATS: counts by status, tier and shard, workers, connections (at most 1 s old)."""
        who.require("stats")
        shard = self.shard
        if self.forwarded or shard.coordinator is None:
            stats = shard.stats()
            if self.forwarded:
                stats["row"] = shard.stats_row()  # what the asking shard merges
            if workers_detail:
                stats["worker_list"] = [w.to_wire() for w in self.engine.workers()]
            return stats
        return self._stats_everywhere(workers_detail)

    async def _stats_everywhere(self, workers_detail: bool) -> dict[str, Any]:
        # Counts come fresh from every shard (one mesh round trip each); the workers from the
        # coordinator's registry.
        shard = self.shard
        coordinator = shard.coordinator
        assert coordinator is not None
        shard.flush_report()  # workers heard just now reach the registry first
        peers = shard.peers.others() if shard.peers is not None else []
        answers = await asyncio.gather(
            coordinator.request(MsgType.GET_STATS, {}),
            *(shard.peers.request(i, MsgType.GET_STATS, {}) for i in peers),  # type: ignore[union-attr]
            return_exceptions=True)
        first = answers[0]
        others: dict[str, Any] = first[0] if not isinstance(first, BaseException) else {
            "workers": len(self.engine.workers()), "shards": {}}
        rows = dict(others.get("shards") or {})
        for i, answer in zip(peers, answers[1:]):
            if isinstance(answer, BaseException):
                rows.pop(str(i), None)  # down: its counts are unknown until it is back
            else:
                rows[str(i)] = answer[0]["row"]
        others["shards"] = rows
        stats = shard.stats(others)
        if workers_detail:
            stats["worker_list"] = worker_list(others.get("worker_list"), rows, shard.stats_row(),
                                               self.engine.workers())
        return stats

    # -- workers ---------------------------------------------------------------------------------

    def claim(self, who: Identity, caller: Caller, worker_id: str, max_tasks: int, wait_ms: int,
              types: frozenset[str] | None) -> Result[Claimed | None]:
        """Lease up to ``max_tasks`` ready tasks, waiting up to ``wait_ms`` for one. None: the
        caller went away meanwhile (and what was leased for it was given back)."""
        who.require("claim")
        if not self.forwarded:
            self.shard.worker_heard(worker_id)
        self.shard.check_writable()
        return self.claims.claim(caller, worker_id, max_tasks, wait_ms, types)

    def result(self, who: Identity, worker_id: str, items: list[ResultItem]) -> Result[list[dict[str, Any]]]:
        """Completed / failed / released, per item: ``{"id", "status"}`` or ``{"id", "error"}``."""
        who.require("result")
        if not self.forwarded:
            self.shard.worker_heard(worker_id)
        if self.routed and not all(self.shard.owns(it.id) for it in items):
            return routing.result(self.shard, worker_id, items)
        self.shard.check_writable()
        return self.engine.result(worker_id, items, now_ms())

    def heartbeat(self, who: Identity, worker_id: str, info: dict[str, Any],
                  active: list[bytes] | None) -> Result[tuple[int, list[str]]]:
        """Extend this worker's leases (only those in ``active`` when it lists them):
        the new expiry, and the ids of ``active`` whose lease it no longer holds."""
        who.require("heartbeat")
        if not self.forwarded:
            self.shard.worker_heard(worker_id, info)
        if self.routed:
            return routing.heartbeat(self.shard, worker_id, info, active)
        return self.engine.heartbeat(worker_id, info, active, now_ms())

    def register(self, who: Identity, worker_id: str, info: dict[str, Any]) -> None:
        who.require("register")
        self.engine.register_worker(worker_id, info, now_ms())
        if not self.forwarded:
            self.shard.worker_heard(worker_id, info)

    def deregister(self, who: Identity, worker_id: str) -> Result[int]:
        """The worker leaves: its leases go back to pending at once; how many."""
        who.require("deregister")
        self.shard.check_writable()
        if not self.forwarded:
            self.shard.worker_gone(worker_id)
        if self.routed:
            return routing.deregister(self.shard, worker_id)
        return self.engine.deregister_worker(worker_id, now_ms())


def _fits(results: bytes, n_ids: int) -> bytes:
    if len(results) + 5 + 2048 * n_ids > MAX_FRAME:
        raise TooLarge(f"the results of these tasks add up to {len(results)} bytes, more than "
                       "one frame holds; ask for fewer ids at a time")
    return results


def worker_list(registry: list[dict[str, Any]] | None, rows: dict[str, Any], own_row: dict[str, Any],
                local: list[Any]) -> list[dict[str, Any]]:
    """The workers extension of GET_STATS: the coordinator's registry, with ``active``
    = the leases each holds on every shard (from the shards' fresh rows)."""
    if registry is None:  # the coordinator is restarting: what this shard knows
        return [w.to_wire() for w in local]
    leases: dict[str, int] = {}
    for row in [own_row, *(r for k, r in rows.items() if int(k) != own_row["shard"])]:
        for wid, n in (row.get("leases") or {}).items():
            leases[wid] = leases.get(wid, 0) + n
    return [{**{k: w.get(k) for k in WORKER_KEYS}, "state": w.get("state") or "running",
             "active": leases.get(w["worker_id"], 0)} for w in registry]


__all__ = ["ANYONE", "Caller", "Claimed", "Identity", "Operations", "PEER", "Page", "Queried",
           "WireError", "worker_list"]
