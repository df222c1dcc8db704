"""Requests that need another shard: split by owner, forward over the mesh, merge.

Rules:
1. A task lives on its owner, ``owner_of(id, shards)``; a request about a task
   another shard owns is forwarded to it and answered on the client's own
   connection, in the order the client asked. The owner answers after its own
   group commit, so a forwarded ACK is as durable as a local one.
2. Work for this shard is done before anything is awaited (it joins this loop
   turn's group commit); the answer waits for the forwarded parts.
3. A peer that is down fails its part with Unavailable: per item where the
   answer has items (RESULT, REQUEUE), for the whole request elsewhere.
4. Forwarded requests are served by the owner's mesh sessions, which never
   forward again: no request crosses more than one hop.
5. A request of an API key scoped to some task types carries its patterns to
   the owner (``_scope``, operations.wire_scope), and the owner applies them, as
   it knows each task's type: no type check is skipped for a task on another shard.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from shardq.clock import now_ms
from shardq.errors import Unavailable, WireError
from shardq.patterns import TypePatterns
from shardq.protocol.frames import MsgType
from shardq.protocol.requests import MAX_QUERY_IDS
from shardq.server.taskopts import SubmittedIds, any_options, spec_owner
from shardq.server.worker_control import Beat, local_beat
from shardq.specs import ResultItem, TaskSpec
from shardq.task import PENDING, STATUS_CODES, STATUS_NAMES, id_to_str, owner_of

if TYPE_CHECKING:
    from shardq.server.shard import ShardServer


def _owner(server: ShardServer, raw: bytes) -> int:
    return owner_of(raw, server.shards)


async def _forward(server: ShardServer, shard: int, msg_type: MsgType, header: dict[str, Any],
                   blob: bytes = b"") -> tuple[dict[str, Any], bytes]:
    assert server.peers is not None
    return await server.peers.request(shard, msg_type, header, blob)


# -- CLAIM -------------------------------------------------------------------------------

async def claim_remote(server: ShardServer, worker_id: str, max_tasks: int,
                       types: frozenset[str] | TypePatterns | None,
                       shards: list[int] | None = None) -> tuple[list[dict[str, Any]], bytes]:
    """Lease ready tasks from another shard (the owner grants and keeps the lease).

    Shards said to have ready work of these types are asked first, then the rest:
    an empty answer means none of them had any when asked."""
    assert server.peers is not None
    if shards is None:
        ready = server.others_ready
        likely = [i for i, t in ready.items() if types is None or not types.isdisjoint(t)]
        shards = likely + [i for i in server.peers.others() if i not in likely]
    header: dict[str, Any] = {"worker_id": worker_id, "max": max_tasks}
    if isinstance(types, TypePatterns):
        header["_scope"] = list(types.patterns)  # a scoped key's CLAIM: the owner applies them
    elif types is not None:
        header["types"] = sorted(types)
    for shard in shards:
        try:
            answer, blob = await _forward(server, shard, MsgType.CLAIM, header)
        except WireError:
            continue  # restarting: its work waits for it
        tasks = answer.get("tasks") or []
        if tasks:
            server.engine._count("cross_shard_claims", len(tasks))
            return tasks, blob
    return [], b""


async def release_remote(server: ShardServer, worker_id: str, tasks: list[dict[str, Any]]) -> None:
    """Give back leases granted for a claim that can no longer be answered."""
    by_owner: dict[int, list[dict[str, Any]]] = {}
    for t in tasks:
        by_owner.setdefault(_owner(server, bytes.fromhex(t["id"].replace("-", ""))), []).append(
            {"id": t["id"], "attempt": t["attempt"], "status": "released"})
    for shard, items in by_owner.items():
        try:
            await _forward(server, shard, MsgType.RESULT, {"worker_id": worker_id, "results": items})
        except WireError:
            pass  # the lease expires by itself


# -- the wire form of what is forwarded ------------------------------------------------

def spec_header(spec: TaskSpec) -> dict[str, Any]:
    """One task of a SUBMIT, as the owner's mesh session parses it again."""
    out: dict[str, Any] = {"type": spec.type, "payload_len": len(spec.payload)}
    for key in ("priority", "delay_ms", "scheduled_ms", "max_retries", "timeout_seconds"):
        value = getattr(spec, key)
        if value is not None:
            out[key] = value
    if spec.depends_on:
        out["depends_on"] = [id_to_str(d) for d in spec.depends_on]
    if spec.id is not None:
        out["id"] = id_to_str(spec.id)
    if spec.options is not None:  # expiry made absolute already; the owner checks it again
        out.update(spec.options.extras())
    return out


def result_header(item: ResultItem) -> dict[str, Any]:
    """One item of a RESULT, as the owner's mesh session parses it again."""
    out: dict[str, Any] = {"id": id_to_str(item.id), "attempt": item.attempt, "status": item.status}
    if item.status == "completed":
        out["result_len"] = len(item.result)
    elif item.status == "failed":
        out["error"] = item.error
        out["retry"] = item.retry
    return out


# -- SUBMIT ------------------------------------------------------------------------------

async def submit(server: ShardServer, specs: list[TaskSpec]) -> SubmittedIds:
    """A batch with client ids or dependencies that other shards own.

    A refused batch changes nothing, so every rule that can refuse it is checked
    for the whole batch first (``Engine.check_batch``: an id twice, depth, a task
    depending on itself, a cycle, an unknown dependency), with the status of each
    client id and each dependency outside the batch asked of its owner; only then
    does each owner store its part, the other shards' parts first and this shard's
    part (with the tasks that have no client id) last. See docs/architecture.md for
    what a crash between parts leaves."""
    engine = server.engine
    index = server.index
    owners = [spec_owner(s, server.shards, index) for s in specs]  # unique keys: their owner
    batch_ids = {s.id for s in specs if s.id is not None}
    wanted = set(batch_ids)
    for spec in specs:
        wanted.update(d for d in spec.depends_on if d not in batch_ids)
    status = await _statuses(server, wanted)
    existing, _, _ = engine.check_batch(specs, status.get)
    parts: dict[int, list[int]] = {}
    for i, owner in enumerate(owners):
        parts.setdefault(owner, []).append(i)

    def remote_status(positions: list[int]) -> dict[bytes, int | None]:
        out: dict[bytes, int | None] = {}
        for i in positions:
            if i in existing:
                continue  # stored already: its dependencies are not looked at again
            for dep in specs[i].depends_on:
                if _owner(server, dep) != owners[i]:
                    # A new task of the batch stored by another part is pending as far as we
                    # know; the dependent's shard looks it up until it finishes.
                    st = status.get(dep)
                    out[dep] = PENDING if st is None and dep in batch_ids else st
        return out

    ids: list[str | None] = [None] * len(specs)
    duplicates: list[int] = []

    async def store_part(shard: int, positions: list[int]) -> None:
        header = {"tasks": [spec_header(specs[i]) for i in positions], "_skip_depth": True,
                  "_remote_status": {d.hex(): st for d, st in remote_status(positions).items()}}
        answer, _ = await _forward(server, shard, MsgType.SUBMIT, header,
                                   b"".join(specs[i].payload for i in positions))
        for i, sid in zip(positions, answer["ids"]):
            ids[i] = sid
        duplicates.extend(positions[j] for j in answer.get("duplicates") or ())

    remote = [store_part(s, pos) for s, pos in parts.items() if s != index]
    outcomes = await asyncio.gather(*remote, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    local = parts.get(index)
    if local:
        part = [specs[i] for i in local]
        if any_options(part):
            got, dups = engine.submit_with_options(part, now_ms(), remote_status=remote_status(local),
                                                   check_depth=False)
            duplicates.extend(local[j] for j in dups)
        else:
            got = engine.submit(part, now_ms(), remote_status=remote_status(local), check_depth=False)
        server.mutated()
        for i, raw in zip(local, got):
            ids[i] = id_to_str(raw)
    return SubmittedIds(ids, sorted(duplicates))  # type: ignore[arg-type]


async def _statuses(server: ShardServer, ids: set[bytes]) -> dict[bytes, int | None]:
    """The status of each of ``ids`` at its owner (None: no such task), asked of every owner at once."""
    by_owner: dict[int, list[bytes]] = {}
    for raw in ids:
        by_owner.setdefault(_owner(server, raw), []).append(raw)
    out: dict[bytes, int | None] = {raw: server.store.status_of(raw) for raw in by_owner.pop(server.index, ())}

    async def ask(shard: int, chunk: list[bytes]) -> None:
        answer, _ = await _forward(server, shard, MsgType.QUERY_STATUS, {"ids": [id_to_str(d) for d in chunk]})
        for raw, task in zip(chunk, answer.get("tasks") or ()):
            out[raw] = None if task is None else STATUS_CODES[task["status"]]

    await asyncio.gather(*(ask(shard, mine[at:at + MAX_QUERY_IDS])
                           for shard, mine in by_owner.items() for at in range(0, len(mine), MAX_QUERY_IDS)))
    return out


# -- RESULT / HEARTBEAT / DEREGISTER ----------------------------------------------------------

async def result(server: ShardServer, worker_id: str, items: list[ResultItem], local_result: Any,
                 scope: dict[str, Any]) -> list[dict[str, Any]]:
    """``local_result(worker_id, items)`` answers this shard's items; ``scope``: the header field
    with a scoped key's patterns (rule 5), or empty."""
    out: list[dict[str, Any] | None] = [None] * len(items)
    by_owner: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        by_owner.setdefault(_owner(server, item.id), []).append(i)
    local = by_owner.pop(server.index, None)
    if local:
        answers = local_result(worker_id, [items[i] for i in local])
        server.mutated()
        for i, a in zip(local, answers):
            out[i] = a

    async def forward(shard: int, positions: list[int]) -> None:
        blob = b"".join(items[i].result for i in positions if items[i].status == "completed")
        try:
            answer, _ = await _forward(server, shard, MsgType.RESULT,
                                       {"worker_id": worker_id,
                                        "results": [result_header(items[i]) for i in positions], **scope},
                                       blob)
            for i, a in zip(positions, answer["results"]):
                out[i] = a
        except WireError as err:
            for i in positions:
                out[i] = {"id": id_to_str(items[i].id), "error": err.to_wire()}

    await asyncio.gather(*(forward(s, pos) for s, pos in by_owner.items()))
    return out  # type: ignore[return-value]


async def heartbeat(server: ShardServer, worker_id: str, info: dict[str, Any],
                    active: list[bytes] | None, command: str | None = None) -> Beat:
    """Every shard extends this worker's leases; each owner says which are lost or cancelled."""
    assert server.peers is not None
    mine = None if active is None else [a for a in active if _owner(server, a) == server.index]
    expires, lost, cancelled, _ = local_beat(server.engine, worker_id, info, mine, now_ms())
    server.mutated()

    async def forward(shard: int) -> tuple[list[str], list[str]]:
        header: dict[str, Any] = {"worker_id": worker_id}
        if active is not None:
            header["active"] = [id_to_str(a) for a in active if _owner(server, a) == shard]
        try:
            answer, _ = await _forward(server, shard, MsgType.HEARTBEAT, header)
        except WireError:
            return [], []  # restarting: its leases are reclaimed or extended when it is back
        return answer.get("lost") or [], answer.get("cancelled") or []

    for more, stop in await asyncio.gather(*(forward(s) for s in server.peers.others())):
        lost.extend(more)
        cancelled.extend(stop)
    return Beat(expires, lost, cancelled, command)


async def deregister(server: ShardServer, worker_id: str) -> int:
    assert server.peers is not None
    released = server.engine.deregister_worker(worker_id, now_ms())
    server.mutated()

    async def forward(shard: int) -> int:
        try:
            answer, _ = await _forward(server, shard, MsgType.DEREGISTER_WORKER, {"worker_id": worker_id})
        except WireError:
            return 0
        return int(answer.get("released", 0))

    return released + sum(await asyncio.gather(*(forward(s) for s in server.peers.others())))


# -- QUERY_STATUS / CANCEL / REQUEUE / LIST_TASKS ---------------------------------------------

async def query(server: ShardServer, ids: list[bytes], with_result: bool,
                local_query: Any, scope: dict[str, Any],
                with_payload: bool = False) -> tuple[list[dict[str, Any] | None], bytes]:
    """``local_query(ids)`` answers this shard's part as (wire tasks, results[, payloads])."""
    tasks: list[dict[str, Any] | None] = [None] * len(ids)
    results: list[bytes] = [b""] * len(ids)
    payloads: list[bytes] = [b""] * len(ids)
    by_owner: dict[int, list[int]] = {}
    for i, raw in enumerate(ids):
        by_owner.setdefault(_owner(server, raw), []).append(i)
    local = by_owner.pop(server.index, None)
    if local:
        wire, res = local_query([ids[i] for i in local])
        for i, t, r in zip(local, wire, res):
            tasks[i], results[i] = t, r
        if with_payload:
            for i, p in zip(local, res[len(local):]):
                payloads[i] = p

    async def forward(shard: int, positions: list[int]) -> None:
        answer, blob = await _forward(server, shard, MsgType.QUERY_STATUS,
                                      {"ids": [id_to_str(ids[i]) for i in positions], "with_result": with_result,
                                       **({"with_payload": True} if with_payload else {}), **scope})
        pos = 0
        for i, t in zip(positions, answer["tasks"]):
            tasks[i] = t
            n = (t or {}).get("result_len") or 0 if with_result else 0
            results[i] = blob[pos:pos + n]
            pos += n
        if with_payload:
            for i, t in zip(positions, answer["tasks"]):
                n = (t or {}).get("payload_len") or 0
                payloads[i] = blob[pos:pos + n]
                pos += n

    await asyncio.gather(*(forward(s, p) for s, p in by_owner.items()))
    return tasks, b"".join((*(results if with_result else ()), *(payloads if with_payload else ())))


async def cancel(server: ShardServer, raw: bytes, scope: dict[str, Any]) -> str:
    answer, _ = await _forward(server, _owner(server, raw), MsgType.CANCEL, {"id": id_to_str(raw), **scope})
    return str(answer["status"])


async def requeue_ids(server: ShardServer, ids: list[bytes], local: Any, scope: dict[str, Any]) -> dict[str, Any]:
    """``local(ids)`` requeues this shard's ids and returns their result items."""
    results: list[dict[str, Any] | None] = [None] * len(ids)
    by_owner: dict[int, list[int]] = {}
    for i, raw in enumerate(ids):
        by_owner.setdefault(_owner(server, raw), []).append(i)
    mine = by_owner.pop(server.index, None)
    if mine:
        for i, r in zip(mine, local([ids[i] for i in mine])):
            results[i] = r

    async def forward(shard: int, positions: list[int]) -> None:
        try:
            answer, _ = await _forward(server, shard, MsgType.REQUEUE,
                                       {"ids": [id_to_str(ids[i]) for i in positions], **scope})
            for i, r in zip(positions, answer["results"]):
                results[i] = r
        except WireError as err:
            for i in positions:
                results[i] = {"id": id_to_str(ids[i]), "error": err.to_wire()}

    await asyncio.gather(*(forward(s, p) for s, p in by_owner.items()))
    return {"requeued": sum(1 for r in results if r is not None and "error" not in r), "results": results}


async def requeue_elsewhere(server: ShardServer, status: int, task_type: str | None, limit: int,
                            scope: dict[str, Any]) -> int:
    """REQUEUE without ids, on the other shards in turn, up to ``limit`` in all."""
    assert server.peers is not None
    total = 0
    for shard in server.peers.others():
        if total >= limit:
            break
        header: dict[str, Any] = {"status": STATUS_NAMES[status], "limit": limit - total, **scope}
        if task_type is not None:
            header["type"] = task_type
        answer, _ = await _forward(server, shard, MsgType.REQUEUE, header)
        total += int(answer.get("requeued", 0))
    return total


async def list_tasks(server: ShardServer, header: dict[str, Any], limit: int,
                     local: tuple[list[dict[str, Any]], str | None]) -> dict[str, Any]:
    """One page across shards, in task-id order.

    Each shard answers a page after the cursor; a shard that stopped early (a
    full page, or its bounded scan) reached only up to its own cursor, so the
    merged page stops at the lowest such point and the next page resumes there."""
    assert server.peers is not None
    fwd = {k: v for k, v in header.items() if k != "rid"}
    pages = [local]

    async def ask(shard: int) -> None:
        answer, _ = await _forward(server, shard, MsgType.LIST_TASKS, fwd)
        pages.append((answer["tasks"], answer["cursor"]))

    await asyncio.gather(*(ask(s) for s in server.peers.others()))

    def key(task: dict[str, Any]) -> str:
        return task["id"].replace("-", "")

    bound = min((c for _, c in pages if c is not None), default=None)
    merged = sorted((t for tasks, _ in pages for t in tasks if bound is None or key(t) <= bound), key=key)
    if len(merged) > limit:
        merged = merged[:limit]
        return {"tasks": merged, "cursor": key(merged[-1])}
    return {"tasks": merged, "cursor": bound}


__all__ = ["claim_remote", "release_remote", "submit", "result", "heartbeat", "deregister", "query",
           "cancel", "requeue_ids", "requeue_elsewhere", "list_tasks", "Unavailable"]
