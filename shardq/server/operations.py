"""Every operation a client can ask of a shard, for every transport: the TCP protocol and HTTP.

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
import functools
import ipaddress
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from shardq.clock import now_ms
from shardq.config import PERMISSIONS
from shardq.errors import BadRequest, Forbidden, InvalidState, NotFound, TooLarge, Unauthorized, WireError
from shardq.patterns import PatternError, TypePatterns
from shardq.protocol.frames import MAX_FRAME, MsgType
from shardq.server import dep_results, insight, routing, taskopts, worker_control
from shardq.server.claims import Caller, Claimed, Claims
from shardq.server.control_ops import ControlOperations
from shardq.server.history import RESOLUTIONS, SERIES
from shardq.server.schedule_ops import ScheduleOperations
from shardq.specs import ResultItem, TaskSpec
from shardq.task import STATUS_NAMES, id_to_str

if TYPE_CHECKING:
    from shardq.server.mesh import Link
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.operations")

# What a refused HELLO is told: the same for an unknown key and a wrong secret (no oracle for
# which ids exist); expiry and disabling are said, so that an operator knows what to fix.
_REFUSALS = {"disabled": "this API key is disabled", "expired": "this API key has expired"}

T = TypeVar("T")
Result = T | Awaitable[T]  # an answer now, or one to await (routed, or waiting)


async def settled(result: T | Awaitable[T]) -> T:
    """An operation's answer, awaited when it is one (rule 2): for HTTP and the dashboard."""
    return await result if isinstance(result, Awaitable) else result


ALL_PERMISSIONS = frozenset(PERMISSIONS)
# The permission each operation needs (``admin`` grants every one). An operation missing here
# needs ``admin``: a new operation is closed until it is given its row.
PERMISSION = {
    "submit": "submit", "claim": "claim", "result": "claim", "heartbeat": "claim",
    "register": "claim", "deregister": "claim", "query": "read", "list": "read", "stats": "read",
    "cancel": "admin", "requeue": "admin", "history": "read",
    "schedule_list": "read",  # schedule_add, _remove, _pause: admin (schedule_ops.py)
    "explain": "read",  # insight.py
    # insight (insight_ops.py): reads, and the changes an operator makes
    "dlq_groups": "read", "search": "read", "type_stats": "read", "bulk_dry_run": "read",
    "delete": "admin", "bulk": "admin",
}
PERMISSION["get_controls"] = "read"  # type controls; pause, resume and limits need admin

# The operations whose tasks a key's task-type patterns limit (docs/security.md). The others
# (stats, heartbeat, register, deregister) need the permission on any pattern: they carry no
# task's type, id or payload, only counts and a worker's own leases.
TYPE_SCOPED = frozenset({"submit", "claim", "result", "query", "list", "cancel", "requeue", "explain",
                         "dlq_groups", "search", "type_stats", "delete", "bulk", "bulk_dry_run"})
# A REQUEUE without ids runs in slices of this many record moves, the group commit between them.
REQUEUE_SLICE = 200
WORKER_KEYS = ("worker_id", "hostname", "pid", "types", "concurrency", "first_seen_ms", "last_seen_ms",
               "cpu_percent", "memory_rss", "memory_percent", "state", "command")
# Mesh requests for a scoped key carry its patterns in this header field; the owner applies them.
SCOPE_FIELD = "_scope"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who asks: the name of its API key (for logs), what that key may do, and on which task
    types (``scopes``: permission -> patterns; None: every type for every permission it has).
    ``key_id`` and ``secret_hash`` let a connection be closed when its key is revoked."""

    name: str
    permissions: frozenset[str]
    scopes: tuple[tuple[str, TypePatterns], ...] | None = None
    key_id: str | None = None
    secret_hash: str = ""

    def allows(self, operation: str) -> bool:  # has the permission ``operation`` needs (or admin)
        return PERMISSION.get(operation, "admin") in self.permissions or "admin" in self.permissions

    def require(self, operation: str) -> None:
        if not self.allows(operation):
            perm = PERMISSION.get(operation, "admin")
            raise Forbidden(f"this API key lacks the '{perm}' permission for {operation}")

    def scope(self, operation: str) -> TypePatterns | None:
        """The task types ``operation`` may touch; None for every type."""
        if self.scopes is None:
            return None
        perm = PERMISSION.get(operation, "admin")
        found = [pats for p, pats in self.scopes if p in (perm, "admin")]
        if not found:
            return NO_TYPES
        merged = found[0] if len(found) == 1 else found[0].union(found[1])
        return None if merged.all else merged


NO_TYPES = TypePatterns(["\x00"])  # a pattern no task type matches (types are printable)
ANYONE = Identity("anonymous", ALL_PERMISSIONS)  # auth is off
PEER = Identity("peer", ALL_PERMISSIONS)  # another shard, over the mesh


def peer_identity(header: dict[str, Any]) -> Identity:
    """Who a mesh request acts for: any type, or the patterns the asking shard sent."""
    pats = header.get(SCOPE_FIELD)
    actor = header.get(insight.ACTOR_FIELD)  # the key a forwarded request acts for (history)
    actor = actor if type(actor) is str else None
    if pats is None:
        return PEER if actor is None else Identity("peer", ALL_PERMISSIONS, key_id=actor)
    try:
        scope = TypePatterns(pats)
    except PatternError as exc:
        raise BadRequest(f"{SCOPE_FIELD}: {exc}") from None
    return Identity("peer", ALL_PERMISSIONS, tuple((p, scope) for p in PERMISSIONS), actor)


def wire_scope(scope: TypePatterns | None) -> dict[str, Any]:
    """The header field that carries ``scope`` to the owner of a task (empty: every type)."""
    return {} if scope is None else {SCOPE_FIELD: list(scope.patterns)}


def _hidden(raw: bytes) -> NotFound:
    # The same answer as for an id no task has: a scoped key learns nothing of other types.
    return NotFound(f"no task {id_to_str(raw)}")


@dataclass(slots=True)
class Queried:
    tasks: list[dict[str, Any] | None]  # wire form, None for an unknown id
    results: bytes  # the results of the tasks that have one, in order, when asked for; then their payloads


@dataclass(slots=True)
class Page:
    tasks: list[dict[str, Any]]
    cursor: str | None


class Operations(ScheduleOperations, ControlOperations):
    def __init__(self, shard: ShardServer, forwarded: bool = False) -> None:
        self.shard = shard
        self.engine = shard.engine
        self.forwarded = forwarded
        self.routed = shard.shards > 1 and shard.peers is not None and not forwarded
        self.claims = Claims(shard, self.routed)

    # -- identity --------------------------------------------------------------------------

    def authenticate(self, api_key: object, peer: str | None = None, tls: bool = False) -> Identity:
        """The identity of a HELLO's ``api_key`` (anyone at all when auth is off): key string in,
        Identity out, or Unauthorized. ``peer`` (the source address, when the transport knows it)
        and ``tls`` let the insecure-channel rule apply (``check_channel``); a refusal is counted,
        logged without the secret, and carries ``delay_s``: how long to wait before answering it."""
        if self.forwarded:
            return PEER
        auth = self.shard.cfg.auth
        if not auth.enabled:
            return ANYONE
        keys = self.shard.auth
        if peer is not None and not self.channel_ok(peer, tls):
            raise self._refused("insecure_channel", "unknown", peer, Unauthorized(
                "API keys are not accepted over plaintext from a non-loopback address: connect "
                "with TLS (shardqs://), or set auth.allow_insecure on the server (docs/security.md)"))
        verdict = keys.verify(api_key)
        rec = verdict.record
        if rec is None:
            raise self._refused(verdict.reason, verdict.key_id, peer or "unknown",
                                Unauthorized(_REFUSALS.get(verdict.reason, "api_key is missing or not valid")))
        return Identity(rec.name, frozenset(p for p, _ in rec.permissions), rec.permissions, rec.id,
                        verdict.hash)

    def channel_ok(self, peer: str, tls: bool) -> bool:
        """May an API key come over this channel? TLS, or a loopback peer, or allow_insecure."""
        return tls or self.shard.cfg.auth.allow_insecure or _is_loopback(peer)

    def _refused(self, reason: str, key_id: str, peer: str, err: Unauthorized) -> Unauthorized:
        err.delay_s = self.shard.auth.failed(reason, key_id, peer, time.monotonic())  # type: ignore[attr-defined]
        return err

    def initial_identity(self) -> Identity | None:
        """Who a new connection is before its HELLO: nobody when auth is on."""
        return ANYONE if self.forwarded or not self.shard.cfg.auth.enabled else None

    def still_valid(self, who: Identity) -> str:
        """"" while the key ``who`` authenticated with may go on; else why not (revoked,
        rotated, disabled, expired): its connections are closed then."""
        if who.key_id is None:
            return ""
        return self.shard.auth.still_valid(who.key_id, who.secret_hash)

    # -- producers ---------------------------------------------------------------------------

    def submit(self, who: Identity, specs: list[TaskSpec]) -> Result[list[str]]:
        who.require("submit")
        scope = who.scope("submit")
        if scope is not None:
            for i, spec in enumerate(specs):
                if not scope.matches(spec.type):
                    raise Forbidden(f"tasks[{i}]: this API key may not submit tasks of type {spec.type!r}")
        self.shard.check_submit_space()
        if taskopts.any_options(specs):  # expiry, unique keys (server/taskopts.py)
            here = taskopts.submit_here(self.shard, specs, self.routed)
            return here if here is not None else routing.submit(self.shard, specs)
        if self.routed and not self._all_local(specs):
            return routing.submit(self.shard, specs, insight.actor_of(who))
        with insight.acting(self, who):
            return [id_to_str(i) for i in self.engine.submit(specs, now_ms())]

    def store_part(self, specs: list[TaskSpec], remote_status: dict[bytes, int | None],
                   check_depth: bool, who: Identity = PEER) -> list[str]:
        """A forwarded SUBMIT: this shard's part of a batch another shard checked as a whole."""
        self.shard.check_submit_space()
        with insight.acting(self, who):
            if taskopts.any_options(specs):
                return taskopts.store_part(self.shard, specs, remote_status, check_depth)
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

    def query(self, who: Identity, ids: list[bytes], with_result: bool,
              with_payload: bool = False, with_history: bool = False) -> Result[Queried]:
        """The tasks of ``ids`` (with their histories when asked); their results and payloads (in
        the blob, results first) when asked."""
        who.require("query")
        scope = who.scope("query")
        if self.routed and not all(self.shard.owns(i) for i in ids):
            return self._routed_query(ids, with_result, scope, with_payload, with_history)
        wire, results = self.query_local(ids, scope, with_result, with_payload, with_history)
        return Queried(wire, _fits(b"".join(results), len(ids)) if with_result or with_payload else b"")

    def query_local(self, ids: list[bytes], scope: TypePatterns | None = None,
                    with_result: bool = True, with_payload: bool = False, with_history: bool = False
                    ) -> tuple[list[dict[str, Any] | None], list[bytes]]:
        """This shard's tasks of ``ids`` (None where there is none, or none ``scope`` may see),
        and the blob's parts: each one's result (when asked), then each one's payload (when asked)."""
        tasks = self.engine.query(ids)
        if scope is not None:
            tasks = [t if t is not None and scope.matches(t.type) else None for t in tasks]
        part = self.shard.store.part_index
        wire = [None if t is None else t.to_wire(part(t.id)) for t in tasks]
        if with_history:
            insight.add_history(self, wire, tasks)
        results = [self.engine.store.get_result(t.id) if with_result and t is not None and t.result_len
                   else b"" for t in tasks]
        if with_payload:
            results += [self.engine.store.get_payload(t.id) if t is not None and t.payload_len else b""
                        for t in tasks]
        return wire, results

    async def _routed_query(self, ids: list[bytes], with_result: bool, scope: TypePatterns | None,
                            with_payload: bool = False, with_history: bool = False) -> Queried:
        extra = {**wire_scope(scope), "with_history": True} if with_history else wire_scope(scope)
        tasks, blob = await routing.query(self.shard, ids, with_result,
                                          functools.partial(self.query_local, scope=scope, with_result=with_result,
                                                            with_payload=with_payload, with_history=with_history),
                                          extra, with_payload)
        return Queried(tasks, _fits(blob, len(ids)))

    def _visible(self, raw: bytes, scope: TypePatterns | None) -> bool:
        """This shard's task ``raw`` exists and ``scope`` may touch it (None: skip the lookup)."""
        if scope is None:
            return True
        task = self.engine.query([raw])[0]
        return task is not None and scope.matches(task.type)

    def cancel(self, who: Identity, raw: bytes) -> Result[str]:
        """Cancel a task that is not finished (a running one: its lease is revoked, its worker
        told at its next HEARTBEAT: engine/cancelling.py); its new status."""
        who.require("cancel")
        scope = who.scope("cancel")
        if not self.forwarded:
            log.info("CANCEL %s by API key %r", id_to_str(raw), who.name)
        if self.routed and not self.shard.owns(raw):
            return routing.cancel(self.shard, raw, {**wire_scope(scope), **insight.actor_header(who)})
        self.shard.check_writable()
        if not self._visible(raw, scope):
            raise _hidden(raw)
        with insight.acting(self, who):
            self.engine.cancel(raw, now_ms())
        return "cancelled"

    def list_tasks(self, who: Identity, status: int, task_type: str | None, min_priority: int,
                   max_priority: int, limit: int, cursor: str | None) -> Result[Page]:
        who.require("list")
        scope = who.scope("list")
        if scope is not None and task_type is not None and not scope.matches(task_type):
            return Page([], None)  # a type this key may not read: as if it had no tasks
        tasks, nxt = self.engine.list_tasks(status, task_type, min_priority, max_priority, limit, cursor,
                                            type_ok=None if scope is None else scope.matches)
        part = self.shard.store.part_index
        page = [t.to_wire(part(t.id)) for t in tasks]
        if not self.routed:
            return Page(page, nxt)
        header: dict[str, Any] = {"status": STATUS_NAMES[status], "min_priority": min_priority,
                                  "max_priority": max_priority, "limit": limit, "cursor": cursor}
        if task_type is not None:
            header["type"] = task_type
        header.update(wire_scope(scope))
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
        scope = who.scope("requeue")
        if not self.forwarded:
            log.info("REQUEUE %s by API key %r", f"{len(ids)} ids" if ids is not None else
                     f"status={STATUS_NAMES[status]} type={task_type} limit={limit}", who.name)
        if ids is None:
            if scope is not None and task_type is not None and not scope.matches(task_type):
                return {"requeued": 0}
            return self._requeue_scan(status, task_type, limit, scope, who)
        if self.routed and not all(self.shard.owns(i) for i in ids):
            return routing.requeue_ids(self.shard, ids, functools.partial(self.requeue_local, scope=scope,
                                                                          who=who),
                                       {**wire_scope(scope), **insight.actor_header(who)})
        results = self.requeue_local(ids, scope, who)
        return {"requeued": sum(1 for r in results if "error" not in r), "results": results}

    def requeue_local(self, ids: list[bytes], scope: TypePatterns | None = None,
                      who: Identity = ANYONE) -> list[dict[str, Any]]:
        now = now_ms()
        results: list[dict[str, Any]] = []
        for raw in ids:
            sid = id_to_str(raw)
            try:
                if not self._visible(raw, scope):
                    raise _hidden(raw)
                with insight.acting(self, who):
                    self.engine.requeue(raw, now)
            except (NotFound, InvalidState) as err:
                results.append({"id": sid, "error": err.to_wire()})
            else:
                results.append({"id": sid, "status": "pending"})
        return results

    async def _requeue_scan(self, status: int, task_type: str | None, limit: int,
                            scope: TypePatterns | None, who: Identity = ANYONE) -> dict[str, Any]:
        total = 0
        after: bytes | None = None
        while total < limit:
            # At most REQUEUE_SLICE per loop turn (each requeue is a record move); the group
            # commit runs between slices.
            with insight.acting(self, who):
                n, after = self.engine.requeue_slice(status, task_type, min(limit - total, REQUEUE_SLICE),
                                                     after, now_ms(),
                                                     type_ok=None if scope is None else scope.matches)
            total += n
            self.shard.mutated()
            if after is None:
                break
            await asyncio.sleep(0)
        if self.routed and total < limit:
            total += await routing.requeue_elsewhere(self.shard, status, task_type, limit - total,
                                                     {**wire_scope(scope), **insight.actor_header(who)})
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
                stats["worker_list"] = [{**w.to_wire(), "command": shard.orders.command_for(w.worker_id)}
                                        for w in self.engine.workers()]
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
                                               self.engine.workers(), shard.orders.orders)
        return stats

    def history(self, who: Identity, resolution: str) -> Result[dict[str, Any]]:
        """The broker's throughput and depth over the last minutes ("1s") or hour ("10s"), kept by
        the coordinator (server/history.py); empty when it cannot be reached."""
        who.require("history")
        if resolution not in RESOLUTIONS:
            raise BadRequest(f"resolution: {resolution!r} is not one of {', '.join(RESOLUTIONS)}")
        coordinator = self.shard.coordinator
        if coordinator is None:
            return {"resolution": resolution, "series": {name: [] for name in SERIES}}
        return self._history(coordinator, resolution)

    def worker_usage(self, who: Identity) -> Result[dict[str, list[list[Any]]]]:
        """Each live worker's CPU and memory over the last hour, as its heartbeats reported them
        (the coordinator keeps them: server/history.py ``record_usage``); {} without a coordinator."""
        who.require("history")
        coordinator = self.shard.coordinator
        if coordinator is None:
            return {}
        return self._usage(coordinator)

    async def _usage(self, coordinator: Link) -> dict[str, list[list[Any]]]:
        answer, _ = await coordinator.request(MsgType.GET_STATS, {"usage": True})
        usage: dict[str, list[list[Any]]] = answer["usage"]
        return usage

    async def _history(self, coordinator: Link, resolution: str) -> dict[str, Any]:
        answer, _ = await coordinator.request(MsgType.GET_STATS, {"history": resolution})
        return {"resolution": resolution, "series": answer["series"]}

    # -- workers ---------------------------------------------------------------------------------

    def claim(self, who: Identity, caller: Caller, worker_id: str, max_tasks: int, wait_ms: int,
              types: frozenset[str] | None, dependency_results: bool = False) -> Result[Claimed | None]:
        """Lease up to ``max_tasks`` ready tasks, waiting up to ``wait_ms`` for one. None: the
        caller went away meanwhile (and what was leased for it was given back).
        ``dependency_results``: carry the results of their dependencies (dep_results.py)."""
        who.require("claim")
        scoped = _claim_types(who.scope("claim"), types)
        if not self.forwarded:
            self.shard.worker_heard(worker_id)
        self.shard.check_writable()
        got = self.claims.claim(caller, worker_id, max_tasks, wait_ms, scoped)
        return dep_results.attach(self.shard, got) if dependency_results else got

    def result(self, who: Identity, worker_id: str, items: list[ResultItem]) -> Result[list[dict[str, Any]]]:
        """Completed / failed / released, per item: ``{"id", "status"}`` or ``{"id", "error"}``."""
        who.require("result")
        scope = who.scope("result")
        if not self.forwarded:
            self.shard.worker_heard(worker_id)
        if self.routed and not all(self.shard.owns(it.id) for it in items):
            return routing.result(self.shard, worker_id, items,
                                  functools.partial(self.result_local, scope=scope), wire_scope(scope))
        self.shard.check_writable()
        return self.result_local(worker_id, items, scope)

    def result_local(self, worker_id: str, items: list[ResultItem],
                     scope: TypePatterns | None = None) -> list[dict[str, Any]]:
        """RESULT for this shard's items; an item of a type ``scope`` may not claim is NotFound."""
        if scope is None:
            return self.engine.result(worker_id, items, now_ms())
        out: list[dict[str, Any] | None] = [None] * len(items)
        allowed = []
        for i, item in enumerate(items):
            if self._visible(item.id, scope):
                allowed.append(i)
            else:
                out[i] = {"id": id_to_str(item.id), "error": _hidden(item.id).to_wire()}
        for i, answer in zip(allowed, self.engine.result(worker_id, [items[i] for i in allowed], now_ms())):
            out[i] = answer
        return out  # type: ignore[return-value]

    def heartbeat(self, who: Identity, worker_id: str, info: dict[str, Any],
                  active: list[bytes] | None) -> Result[worker_control.Beat]:
        """Extend this worker's leases (only those in ``active`` when it lists them): the new
        expiry, the ids of ``active`` whose lease it no longer holds, those of them (or of its
        leases) revoked by CANCEL, and a standing quiet/stop order (worker_control.py)."""
        who.require("heartbeat")
        command = None
        if not self.forwarded:
            self.shard.worker_heard(worker_id, info)
            command = self.shard.orders.command_for(worker_id)
        if self.routed:
            return routing.heartbeat(self.shard, worker_id, info, active, command)
        return worker_control.local_beat(self.engine, worker_id, info, active, now_ms(), command)

    def worker_control(self, who: Identity, worker_id: str, action: str) -> Result[dict[str, Any]]:
        """Quiet or stop a worker (admin): recorded at the coordinator, delivered in the
        worker's next HEARTBEAT answer; ``{"worker_id", "command", "state"}``."""
        who.require("worker_control")
        log.info("WORKER_CONTROL %s %s by API key %r", action, worker_id, who.name)
        return worker_control.control(self.shard, worker_id, action)

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


def _claim_types(scope: TypePatterns | None,
                 types: frozenset[str] | None) -> frozenset[str] | TypePatterns | None:
    """What a CLAIM may take: the types it named, each allowed by ``scope`` (Forbidden otherwise:
    a worker asking for types its key cannot claim is misconfigured, and should hear so), or,
    when it named none, the key's patterns themselves."""
    if scope is None:
        return types
    if types is None:
        return scope
    refused = sorted(t for t in types if not scope.matches(t))
    if refused:
        raise Forbidden(f"this API key may not claim tasks of type {', '.join(map(repr, refused))}")
    return types


def _is_loopback(peer: str) -> bool:
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return peer == "unix"  # a Unix socket is as local as loopback
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def _fits(results: bytes, n_ids: int) -> bytes:
    if len(results) + 5 + 2048 * n_ids > MAX_FRAME:
        raise TooLarge(f"the results of these tasks add up to {len(results)} bytes, more than "
                       "one frame holds; ask for fewer ids at a time")
    return results


def worker_list(registry: list[dict[str, Any]] | None, rows: dict[str, Any], own_row: dict[str, Any],
                local: list[Any], orders: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The workers extension of GET_STATS: the coordinator's registry, with ``active``
    = the leases each holds on every shard (from the shards' fresh rows)."""
    if registry is None:  # the coordinator is restarting: what this shard knows
        return [{**w.to_wire(), "command": (orders or {}).get(w.worker_id)} for w in local]
    leases: dict[str, int] = {}
    for row in [own_row, *(r for k, r in rows.items() if int(k) != own_row["shard"])]:
        for wid, n in (row.get("leases") or {}).items():
            leases[wid] = leases.get(wid, 0) + n
    return [{**{k: w.get(k) for k in WORKER_KEYS}, "state": w.get("state") or "running",
             "active": leases.get(w["worker_id"], 0)} for w in registry]


__all__ = ["ANYONE", "Caller", "Claimed", "Identity", "Operations", "PEER", "Page", "Queried",
           "WireError", "worker_list"]
