"""The insight operations, for every transport: dead-letter groups, DELETE, BULK requeue/delete by
group or filter (with a dry run), SEARCH, and per-type figures (TYPE_STATS).

Rules (as operations.py, whose ``Operations`` and ``Identity`` these functions take):
1. The permission first (operations.PERMISSION: read for groups, search and figures; admin for
   delete and bulk), then a key's task-type patterns limit what is seen and touched.
2. Across shards: groups and figures are merged from every shard's own part (counts add up,
   histograms merge bucket by bucket: engine/figures.py); DELETE goes to each id's owner; BULK runs
   here, then on each other shard in turn, each in bounded slices with the group commit between
   them, so no shard's loop stalls; SEARCH walks the shards in order, one bounded page each.
   Forwarded requests (``ops.forwarded``) answer for this shard alone, in the same message types.
3. A dry run of BULK counts what it would touch and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shardq.clock import now_ms
from shardq.engine import figures
from shardq.engine.insight import TaskFilter
from shardq.engine.search import SearchQuery
from shardq.engine.triage import merge_rows
from shardq.errors import BadRequest, InvalidState, NotFound, WireError
from shardq.patterns import TypePatterns
from shardq.protocol.frames import MsgType
from shardq.server.operations import Identity, Operations, Result, wire_scope
from shardq.task import STATUS_NAMES, id_to_str, owner_of

log = logging.getLogger("shardq.operations")

BULK_SLICE = 200  # record moves or deletes per loop turn (as REQUEUE_SLICE, operations.py)


def _type_ok(scope: TypePatterns | None) -> Any:
    return None if scope is None else scope.matches


def _peers(ops: Operations) -> list[int]:
    peers = ops.shard.peers
    return peers.others() if ops.routed and peers is not None else []


async def _ask(ops: Operations, shard: int, msg_type: MsgType, header: dict[str, Any]) -> dict[str, Any]:
    assert ops.shard.peers is not None
    answer, _ = await ops.shard.peers.request(shard, msg_type, header)
    return answer


# -- DLQ_GROUPS ----------------------------------------------------------------------------------

def dlq_groups(ops: Operations, who: Identity, task_type: str | None) -> Result[dict[str, Any]]:
    who.require("dlq_groups")
    scope = who.scope("dlq_groups")
    rows = [r for r in ops.engine.dead_groups(_type_ok(scope)) if task_type is None or r["type"] == task_type]
    if ops.forwarded:
        return {"_rows": rows}
    if not _peers(ops):
        return _groups_answer([rows])
    header: dict[str, Any] = {**wire_scope(scope), **({"type": task_type} if task_type else {})}
    return _groups_everywhere(ops, header, rows)


async def _groups_everywhere(ops: Operations, header: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    answers = await asyncio.gather(*(_ask(ops, s, MsgType.DLQ_GROUPS, header) for s in _peers(ops)))
    return _groups_answer([rows, *(a["_rows"] for a in answers)])


def _groups_answer(parts: list[list[dict[str, Any]]]) -> dict[str, Any]:
    merged = merge_rows(parts)
    for g in merged:
        g["sample"] = _canonical(g["samples"][-1]) if g["samples"] else None
    return {"groups": [{k: v for k, v in g.items() if k != "samples"} for g in merged],
            "total": sum(g["count"] for g in merged)}


def _canonical(hex_id: str) -> str:
    return id_to_str(bytes.fromhex(hex_id))


# -- DELETE ----------------------------------------------------------------------------------------

def delete(ops: Operations, who: Identity, ids: list[bytes]) -> Result[dict[str, Any]]:
    """Delete finished tasks by id: ``{"deleted": n, "results": [...]}`` (per id: its new status
    "deleted", or its error: NotFound, or InvalidState for a task that has not finished)."""
    who.require("delete")
    ops.shard.check_writable()
    scope = who.scope("delete")
    if not ops.forwarded:
        log.info("DELETE %d ids by API key %r", len(ids), who.name)
    mine = [i for i, raw in enumerate(ids) if ops.shard.owns(raw)]
    results: list[dict[str, Any] | None] = [None] * len(ids)
    for i in mine:
        results[i] = _delete_one(ops, ids[i], scope)
    ops.shard.mutated()
    if len(mine) == len(ids):
        return _deleted(results)
    return _delete_elsewhere(ops, ids, results, scope)


def _delete_one(ops: Operations, raw: bytes, scope: TypePatterns | None) -> dict[str, Any]:
    sid = id_to_str(raw)
    try:
        task = ops.engine.store.get(raw)
        if task is None or (scope is not None and not scope.matches(task.type)):
            raise NotFound(f"no task {sid}")
        ops.engine.delete(raw)
    except (NotFound, InvalidState) as err:
        return {"id": sid, "error": err.to_wire()}
    return {"id": sid, "status": "deleted"}


async def _delete_elsewhere(ops: Operations, ids: list[bytes], results: list[dict[str, Any] | None],
                            scope: TypePatterns | None) -> dict[str, Any]:
    by_owner: dict[int, list[int]] = {}
    for i, raw in enumerate(ids):
        if results[i] is None:
            by_owner.setdefault(owner_of(raw, ops.shard.shards), []).append(i)

    async def forward(shard: int, positions: list[int]) -> None:
        try:
            answer = await _ask(ops, shard, MsgType.DELETE,
                                {"ids": [id_to_str(ids[i]) for i in positions], **wire_scope(scope)})
            for i, r in zip(positions, answer["results"]):
                results[i] = r
        except WireError as err:
            for i in positions:
                results[i] = {"id": id_to_str(ids[i]), "error": err.to_wire()}

    await asyncio.gather(*(forward(s, p) for s, p in by_owner.items()))
    return _deleted(results)


def _deleted(results: list[dict[str, Any] | None]) -> dict[str, Any]:
    return {"deleted": sum(1 for r in results if r is not None and "error" not in r), "results": results}


# -- BULK --------------------------------------------------------------------------------------------

def bulk(ops: Operations, who: Identity, action: str, flt: dict[str, Any], limit: int,
         dry_run: bool) -> Result[dict[str, Any]]:
    """Requeue or delete every task the filter matches (up to ``limit``), or count them
    (``dry_run``): ``{"action", "dry_run", "matched" | "requeued" | "deleted": n}``."""
    operation = "bulk_dry_run" if dry_run else "bulk"  # a dry run only reads
    who.require(operation)
    if not dry_run:
        ops.shard.check_writable()
    scope = who.scope(operation)
    if not ops.forwarded:
        log.info("BULK %s%s status=%s %s by API key %r", action, " (dry run)" if dry_run else "",
                 STATUS_NAMES[flt["status"]], {k: v for k, v in flt.items() if v is not None and k != "status"},
                 who.name)
    return _bulk(ops, action, TaskFilter(**flt), flt, limit, dry_run, scope)


async def _bulk(ops: Operations, action: str, flt: TaskFilter, wire: dict[str, Any], limit: int,
                dry_run: bool, scope: TypePatterns | None) -> dict[str, Any]:
    total = 0
    after: bytes | None = None
    step = "count" if dry_run else action
    type_ok = _type_ok(scope)
    while total < limit:
        # Bounded slices (engine/insight.py, rule 3); the group commit runs between them.
        n, after = ops.engine.bulk_slice(step, flt, after, min(limit - total, BULK_SLICE if not dry_run
                                                               else limit - total), now_ms(), type_ok)
        total += n
        if n and not dry_run:
            ops.shard.mutated()
        if after is None:
            break
        await asyncio.sleep(0)
    if not ops.forwarded:
        for shard in _peers(ops):
            if total >= limit:
                break
            header = {"action": action, "dry_run": dry_run, "limit": limit - total,
                      "status": STATUS_NAMES[wire["status"]], **wire_scope(scope),
                      **{k: v for k, v in wire.items() if v is not None and k != "status"}}
            answer = await _ask(ops, shard, MsgType.BULK, header)
            total += int(answer.get(_counted(action, dry_run), 0))
    return {"action": action, "dry_run": dry_run, _counted(action, dry_run): total}


def _counted(action: str, dry_run: bool) -> str:
    return "matched" if dry_run else ("requeued" if action == "requeue" else "deleted")


# -- SEARCH --------------------------------------------------------------------------------------------

def search(ops: Operations, who: Identity, q: dict[str, Any], limit: int,
           cursor: str | None) -> Result[dict[str, Any]]:
    """One page: ``{"tasks": [...], "cursor": str | None, "scanned": n}``. The cursor is
    ``<shard>.<that shard's cursor>``: the shards are searched in order, each a bounded page."""
    who.require("search")
    type_ok = _type_ok(who.scope("search"))
    query = SearchQuery(**q)
    if ops.forwarded or ops.shard.shards == 1:
        tasks, nxt, scanned = ops.engine.search(query, cursor, limit, type_ok)
        part = ops.shard.store.part_index
        return {"tasks": [t.to_wire(part(t.id)) for t in tasks], "cursor": nxt, "scanned": scanned}
    shard, local = _split_cursor(cursor, ops.shard.shards)
    return _search_everywhere(ops, who, q, query, limit, shard, local, type_ok)


async def _search_everywhere(ops: Operations, who: Identity, q: dict[str, Any], query: SearchQuery,
                             limit: int, shard: int, local: str | None, type_ok: Any) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    scanned = 0
    while shard < ops.shard.shards:
        want = limit - len(out)
        if shard == ops.shard.index:
            tasks, nxt, n = ops.engine.search(query, local, want, type_ok)
            part = ops.shard.store.part_index
            page = [t.to_wire(part(t.id)) for t in tasks]
        else:
            header = {**_search_header(q), "limit": want, "cursor": local, **wire_scope(who.scope("search"))}
            answer = await _ask(ops, shard, MsgType.SEARCH, header)
            page, nxt, n = answer["tasks"], answer["cursor"], answer["scanned"]
        out += page
        scanned += n
        if nxt is not None:
            return {"tasks": out, "cursor": f"{shard}.{nxt}", "scanned": scanned}
        shard, local = shard + 1, None
        if len(out) >= limit:
            break
    more = shard < ops.shard.shards
    return {"tasks": out, "cursor": f"{shard}." if more else None, "scanned": scanned}


def _search_header(q: dict[str, Any]) -> dict[str, Any]:
    """SearchQuery's keyword arguments as SEARCH's header again (for the owner's parser)."""
    out = {k: v for k, v in q.items() if v is not None and k not in ("statuses", "min_priority", "max_priority")}
    if q["statuses"] is not None:
        out["status"] = [STATUS_NAMES[s] for s in sorted(q["statuses"])]
    out["min_priority"], out["max_priority"] = q["min_priority"], q["max_priority"]
    return out


def _split_cursor(cursor: str | None, shards: int) -> tuple[int, str | None]:
    if cursor is None:
        return 0, None
    head, dot, rest = cursor.partition(".")
    if not dot or not head.isdigit() or not 0 <= int(head) < shards:
        raise BadRequest(f"cursor: {cursor!r} is not a cursor this server returned")
    return int(head), rest or None


# -- TYPE_STATS ------------------------------------------------------------------------------------------

def type_stats(ops: Operations, who: Identity, task_type: str | None) -> Result[dict[str, Any]]:
    """Per task type: depth by live status, the oldest pending task's age, completions over the last
    minute, run time and queue wait percentiles (engine/figures.py)."""
    who.require("type_stats")
    scope = who.scope("type_stats")
    now = now_ms()
    rows = ops.engine.type_figures(now, _type_ok(scope))
    if task_type is not None:
        rows = {k: v for k, v in rows.items() if k == task_type}
    if ops.forwarded:
        return {"_rows": rows}
    if not _peers(ops):
        return _types_answer([rows], now)
    header: dict[str, Any] = {**wire_scope(scope), **({"type": task_type} if task_type else {})}
    return _types_everywhere(ops, header, rows, now)


async def _types_everywhere(ops: Operations, header: dict[str, Any], rows: dict[str, Any], now: int) -> dict[str, Any]:
    answers = await asyncio.gather(*(_ask(ops, s, MsgType.TYPE_STATS, header) for s in _peers(ops)),
                                   return_exceptions=True)
    parts = [rows] + [a["_rows"] for a in answers if not isinstance(a, BaseException)]
    down = [s for s, a in zip(_peers(ops), answers) if isinstance(a, BaseException)]
    answer = _types_answer(parts, now)
    if down:
        answer["shards_missing"] = down
    return answer


def _types_answer(parts: list[dict[str, Any]], now: int) -> dict[str, Any]:
    return {"types": figures.merge(parts, now),
            "window_s": [figures.WINDOW_MS // 1000, 2 * figures.WINDOW_MS // 1000]}
