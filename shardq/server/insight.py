"""Task insight for every transport: EXPLAIN (why a task runs or not) and the history that
QUERY_STATUS returns with ``with_history``.

Rules:
1. EXPLAIN is answered by the shard that was asked, in at most two hops, each one a forwarded
   request (routing.py, rule 4): the owner of the task gives its facts (``Engine.explain_facts``),
   the owner of its first unmet dependency gives that task's facts, and the coordinator the live
   workers. The shard that was asked runs the checks (engine/explain.py) on each, so the
   dependency's explanation is one level deep, never more.
2. A forwarded EXPLAIN (``Operations.forwarded``) answers only its own facts: ``{"facts": ...}``.
3. The identity's scope applies to the task and to its dependency alike: a dependency of a type
   the key may not read is "unknown" (explain.py), never described.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from shardq.clock import now_ms
from shardq.engine import explain as checks
from shardq.errors import NotFound, WireError
from shardq.patterns import TypePatterns
from shardq.protocol.frames import MsgType
from shardq.protocol.requests import get_bool, parse_id
from shardq.task import Task, id_to_bytes, id_to_str, owner_of

if TYPE_CHECKING:
    from shardq.server.operations import Identity, Operations

log = logging.getLogger("shardq.insight")

# The header field that carries, over the mesh, the API key id a forwarded CANCEL or REQUEUE acts
# for, so that the owner records it in the task's history.
ACTOR_FIELD = "_actor"
# EXPLAIN asks the coordinator for the live workers; past this it answers with this shard's own.
COORDINATOR_WAIT_S = 2.0


# -- the wire ----------------------------------------------------------------------------------

def parse_explain(header: dict[str, Any]) -> bytes:
    """EXPLAIN ``{"id": id}``."""
    return parse_id(header.get("id"), "id")


def parse_with_history(header: dict[str, Any]) -> bool:
    """QUERY_STATUS's ``with_history`` (default false)."""
    return get_bool(header, "with_history", "", False)


# -- who acts ------------------------------------------------------------------------------

def actor_of(who: Identity) -> str | None:
    """What the history records as who did it: the API key id (None when auth is off)."""
    return who.key_id


class acting:  # noqa: N801 (used as ``with insight.acting(ops, who):``, like a function)
    """Around one engine call: the events it records name ``who``'s key (for a forwarded request,
    the key the asking shard sent: ``operations.peer_identity``). A class, not a generator
    context manager: it wraps every SUBMIT."""

    __slots__ = ("engine", "actor")

    def __init__(self, ops: Operations, who: Identity) -> None:
        self.engine = ops.engine
        self.actor = who.key_id

    def __enter__(self) -> None:
        self.engine.actor = self.actor

    def __exit__(self, *exc: object) -> None:
        self.engine.actor = None


def actor_header(who: Identity) -> dict[str, Any]:
    actor = actor_of(who)
    return {} if actor is None else {ACTOR_FIELD: actor}


def add_history(ops: Operations, wire: list[dict[str, Any] | None], tasks: list[Task | None]) -> None:
    """QUERY_STATUS ``with_history``: each task of ``wire`` (``tasks``' wire form) gets ``history``."""
    history_of = ops.engine.history_of
    for w, task in zip(wire, tasks):
        if w is not None and task is not None:
            w["history"] = history_of(task)


# -- EXPLAIN ---------------------------------------------------------------------------------

def explain(ops: Operations, who: Identity, raw: bytes) -> dict[str, Any] | Awaitable[dict[str, Any]]:
    """Why task ``raw`` runs or does not (engine/explain.py); NotFound when there is no such task
    (or none ``who`` may read)."""
    who.require("explain")
    scope = who.scope("explain")
    if ops.forwarded:
        return {"facts": _local_facts(ops, raw, scope)}
    return _explain(ops, raw, scope)


async def _explain(ops: Operations, raw: bytes, scope: TypePatterns | None) -> dict[str, Any]:
    facts = await _facts(ops, raw, scope)
    if facts is None:
        raise NotFound(f"no task {id_to_str(raw)}")
    workers = await _live_workers(ops)
    facts["live_workers"] = workers
    waiting = facts.get("waiting_on")
    if waiting:
        dep: dict[str, Any] | None = None
        try:
            dep = await _facts(ops, id_to_bytes(waiting[0]), scope)
        except WireError as err:
            log.info("EXPLAIN: the owner of dependency %s did not answer: %s", waiting[0], err)
        if dep is not None:
            dep["live_workers"] = workers
            facts["dependency"] = checks.explain(dep)
    return checks.explain(facts)


def _local_facts(ops: Operations, raw: bytes, scope: TypePatterns | None) -> dict[str, Any] | None:
    facts = ops.engine.explain_facts(raw, now_ms())
    if facts is None or (scope is not None and not scope.matches(facts["type"])):
        return None
    return facts


async def _facts(ops: Operations, raw: bytes, scope: TypePatterns | None) -> dict[str, Any] | None:
    shard = ops.shard
    owner = owner_of(raw, shard.shards)
    if owner == shard.index or shard.peers is None:
        return _local_facts(ops, raw, scope)
    header: dict[str, Any] = {"id": id_to_str(raw)}
    if scope is not None:
        header["_scope"] = list(scope.patterns)
    answer, _ = await shard.peers.request(owner, MsgType.EXPLAIN, header)
    facts: dict[str, Any] | None = answer.get("facts")
    return facts


async def _live_workers(ops: Operations) -> list[dict[str, Any]] | None:
    """The live workers and their types, from the coordinator's registry (which hears every
    shard); this shard's own view when the coordinator does not answer (None: no view at all)."""
    shard = ops.shard
    if shard.coordinator is not None:
        shard.flush_report()  # workers heard just now reach the registry first
        try:
            answer, _ = await asyncio.wait_for(shard.coordinator.request(MsgType.GET_STATS, {}),
                                               COORDINATOR_WAIT_S)
            return [{"worker_id": w.get("worker_id"), "types": w.get("types")}
                    for w in answer.get("worker_list") or []]
        except (WireError, TimeoutError):
            pass
    return [{"worker_id": w.worker_id, "types": w.types} for w in ops.engine.workers()]
