"""CLAIM with ``dependency_results``: the answer carries the results of each task's dependencies
(docs/protocol.md, "Dependency results").

Rules:
1. Only a CLAIM that asks pays: the plain claim path never comes here.
2. Bounded: a dependency's result is carried when it is at most DEP_RESULT_MAX bytes, a task's
   carried results add up to at most DEP_RESULTS_TASK_MAX, an answer's to at most
   DEP_RESULTS_ANSWER_MAX (and always fit the frame beside the payloads). What is not carried is
   listed in the task's ``dependency_results_omitted``; the worker fetches those with
   QUERY_STATUS ``with_result`` if its handler asks for them.
3. A result lives on its task's owner. This shard's are read from its store; the others' are
   asked of their owners, one mesh request per owner shard for the whole answer (QUERY_STATUS
   with the mesh-only field ``_dep_results``, whose owner applies the per-result cap before
   sending), all owners at once. An owner that does not answer leaves its results omitted.
4. Nothing is copied or stored for this: a dependency's result stays where it is (until
   retention deletes it, after which it is omitted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from shardq.errors import WireError
from shardq.protocol.frames import MAX_FRAME, MsgType
from shardq.protocol.requests import MAX_QUERY_IDS, get_int, get_list, parse_ids
from shardq.protocol.task_options import DEP_RESULT_MAX, DEP_RESULTS_ANSWER_MAX, DEP_RESULTS_TASK_MAX
from shardq.server.claims import Claimed
from shardq.task import COMPLETED, id_to_bytes, id_to_str, owner_of

if TYPE_CHECKING:
    from shardq.server.operations import Operations
    from shardq.server.shard import ShardServer

FRAME_RESERVE = 1024 * 1024  # the answer's header and the tasks' JSON

Found = dict[bytes, bytes | None]  # dependency -> its result, None: not carried


def attach(shard: ShardServer, got: Any) -> Any:
    """``got`` (a Claimed, None, or an awaitable of either) with its dependencies' results."""
    if hasattr(got, "__await__"):
        return _attach_later(shard, got)
    if got is None:
        return None
    return _attach(shard, got)


async def _attach_later(shard: ShardServer, pending: Awaitable[Claimed | None]) -> Claimed | None:
    got = await pending
    if got is None:
        return None
    out = _attach(shard, got)
    return await out if not isinstance(out, Claimed) else out


def _attach(shard: ShardServer, claimed: Claimed) -> Claimed | Awaitable[Claimed]:
    deps = [id_to_bytes(d) for t in claimed.tasks for d in t.get("depends_on") or ()]
    if not deps:
        return claimed
    budget = min(DEP_RESULTS_ANSWER_MAX, MAX_FRAME - FRAME_RESERVE - len(claimed.payloads))
    found: Found = {}
    remote: dict[int, list[bytes]] = {}
    for raw in dict.fromkeys(deps):
        if shard.owns(raw):
            found[raw] = _local_result(shard, raw)
        else:
            remote.setdefault(owner_of(raw, shard.shards), []).append(raw)
    if not remote:
        return _assemble(claimed, found, budget)
    return _fetch_then_assemble(shard, claimed, found, remote, budget)


async def _fetch_then_assemble(shard: ShardServer, claimed: Claimed, found: Found,
                               remote: dict[int, list[bytes]], budget: int) -> Claimed:
    await asyncio.gather(*(_ask(shard, owner, ids[i:i + MAX_QUERY_IDS], budget, found)
                           for owner, ids in remote.items() for i in range(0, len(ids), MAX_QUERY_IDS)))
    return _assemble(claimed, found, budget)


async def _ask(shard: ShardServer, owner: int, ids: list[bytes], budget: int, found: Found) -> None:
    assert shard.peers is not None
    try:
        answer, blob = await shard.peers.request(owner, MsgType.QUERY_STATUS, {
            "ids": [id_to_str(i) for i in ids], "_dep_results": {"max_each": DEP_RESULT_MAX, "max_total": budget}})
    except WireError:
        return  # restarting: omitted, fetched by the worker if it needs them
    shard.engine._count("dependency_results_remote", len(ids))
    pos = 0
    for raw, item in zip(ids, answer.get("results") or ()):
        n = item.get("result_len")
        if item.get("carried") and type(n) is int:
            found[raw] = blob[pos:pos + n]
            pos += n


def _local_result(shard: ShardServer, raw: bytes) -> bytes | None:
    task = shard.store.get(raw)
    if task is None or task.status != COMPLETED:
        return None
    if not task.result_len:
        return b""
    if task.result_len > DEP_RESULT_MAX:
        return None
    return shard.store.get_result(raw)


def _assemble(claimed: Claimed, found: Found, budget: int) -> Claimed:
    """Rule 2: each task's ``dependency_results`` (carried, in order, after all payloads in the
    blob) and ``dependency_results_omitted``."""
    blobs = [claimed.payloads]
    for task in claimed.tasks:
        deps = task.get("depends_on") or ()
        if not deps:
            continue
        carried: list[dict[str, Any]] = []
        omitted: list[str] = []
        task_budget = DEP_RESULTS_TASK_MAX
        for sid in deps:
            data = found.get(id_to_bytes(sid))
            if data is None or len(data) > task_budget or len(data) > budget:
                omitted.append(sid)
                continue
            task_budget -= len(data)
            budget -= len(data)
            carried.append({"id": sid, "result_len": len(data)})
            blobs.append(data)
        task["dependency_results"] = carried
        task["dependency_results_omitted"] = omitted
    return Claimed(claimed.tasks, b"".join(blobs))


def serve(ops: Operations, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """The owner's side (a mesh QUERY_STATUS with ``_dep_results``): this shard's results of
    ``ids``, each carried when completed and within the caps."""
    ids = parse_ids(get_list(header, "ids", "", MAX_QUERY_IDS), "ids")
    caps = header.get("_dep_results")
    caps = caps if isinstance(caps, dict) else {}
    max_each = get_int(caps, "max_each", "_dep_results.", 0, MAX_FRAME, default=DEP_RESULT_MAX)
    left = get_int(caps, "max_total", "_dep_results.", 0, MAX_FRAME, default=DEP_RESULTS_ANSWER_MAX)
    shard = ops.shard
    out: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for raw in ids:
        task = shard.store.get(raw) if shard.owns(raw) else None
        if task is None or task.status != COMPLETED:
            out.append({"id": id_to_str(raw), "carried": False})
            continue
        n = task.result_len or 0
        if n > max_each or n > left:
            out.append({"id": id_to_str(raw), "result_len": n, "carried": False})
            continue
        left -= n
        blobs.append(shard.store.get_result(raw) if n else b"")
        out.append({"id": id_to_str(raw), "result_len": n, "carried": True})
    return {"results": out}, b"".join(blobs)
