"""One client connection: the asyncio adapter around the codec, and the dispatch table.

Rules:
1. Bytes go into the sans-I/O decoder; each decoded request is validated
   (protocol/requests.py), run against the engine, and its answer is handed to
   the shard's group commit (``ShardServer.reply``), never written directly.
2. Bad input costs only this connection: a Malformed frame or a bad field is a
   NACK and the connection goes on; a framing error is a NACK and a close;
   anything unexpected is an Internal NACK, logged, and the connection goes on.
3. A client that does not read its answers slows itself down: when its answers
   in flight (queued for the group commit plus the transport's write buffer)
   pass OUT_HIGH_WATER we stop decoding and reading its requests, and go on
   once it has read them.
4. With several shards, a request about tasks another shard owns is routed
   (routing.py): the handler starts it and answers later, out of order, which
   the protocol allows. A *peer* session serves requests forwarded by another
   shard over the mesh: always about this shard's own tasks, never routed again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardq import __version__
from shardq.clock import now_ms
from shardq.config import PERMISSIONS
from shardq.engine.engine import ClaimWaiter, ResultItem, Task
from shardq.errors import (
    BadRequest,
    Forbidden,
    InvalidState,
    NotFound,
    ProtocolViolation,
    TooLarge,
    Unauthorized,
    Unavailable,
    WireError,
)
from shardq.protocol import requests as rq
from shardq.protocol.frames import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    FrameDecoder,
    Malformed,
    Message,
    MsgType,
    encode,
    encode_nack,
)
from shardq.server import routing
from shardq.task import id_to_str

if TYPE_CHECKING:
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.session")

# Which API-key permission each message needs when auth is on.
PERMISSION = {
    MsgType.SUBMIT: "submit", MsgType.CLAIM: "claim", MsgType.RESULT: "claim",
    MsgType.HEARTBEAT: "claim", MsgType.REGISTER_WORKER: "claim",
    MsgType.DEREGISTER_WORKER: "claim", MsgType.QUERY_STATUS: "read",
    MsgType.LIST_TASKS: "read", MsgType.GET_STATS: "read", MsgType.CANCEL: "admin",
    MsgType.REQUEUE: "admin",
}

Answer = tuple[dict[str, Any], bytes] | None  # None: answered later (a waiting CLAIM)

# Bytes of answers one connection may have in flight (queued for the group commit plus the
# transport's write buffer) before we stop decoding its requests: answers are built before
# the transport sees them, so the transport's own high-water mark alone bounds nothing.
OUT_HIGH_WATER = 4 * MAX_FRAME
REQUEUE_SLICE = 200


ALL_PERMISSIONS = frozenset(PERMISSIONS)


class Session(asyncio.Protocol):
    def __init__(self, server: ShardServer, peer: bool = False, carried: bytes = b"") -> None:
        self.server = server
        self.engine = server.engine
        self.peer = peer
        self.routed = server.shards > 1 and not peer and server.peers is not None
        self.carried = carried  # bytes read by the shard that handed this connection over
        self.frames = 0
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.last_frame = time.monotonic()
        self.waiters: set[ClaimWaiter] = set()
        self.permissions: frozenset[str] | None = (
            None if server.cfg.auth.enabled and not peer else ALL_PERMISSIONS)
        self.closing = False
        self.out_pending = 0  # bytes of answers handed to the group commit, not yet written
        self.stalled = False  # stopped decoding until the client reads its answers
        self._handlers: dict[MsgType, Callable[[Message], Answer]] = {
            MsgType.HELLO: self.on_hello, MsgType.SUBMIT: self.on_submit,
            MsgType.CLAIM: self.on_claim, MsgType.RESULT: self.on_result,
            MsgType.HEARTBEAT: self.on_heartbeat, MsgType.QUERY_STATUS: self.on_query,
            MsgType.CANCEL: self.on_cancel, MsgType.LIST_TASKS: self.on_list,
            MsgType.GET_STATS: self.on_stats, MsgType.REGISTER_WORKER: self.on_register,
            MsgType.DEREGISTER_WORKER: self.on_deregister, MsgType.REQUEUE: self.on_requeue,
            MsgType.PING: self.on_ping,
        }

    # -- transport events ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's TCPTransport)
        if self.peer:
            self.server.peer_sessions.add(self)
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A client that cannot read fast enough must not make us buffer without bound.
        transport.set_write_buffer_limits(high=OUT_HIGH_WATER)
        if len(self.server.sessions) >= self.server.cfg.broker.max_connections or self.server.closing:
            transport.write(encode_nack(None, "Unavailable", "too many connections"
                                        if not self.server.closing else "server is shutting down"))
            transport.close()
            self.closing = True
            return
        self.server.sessions.add(self)
        self.server.sessions_changed()
        if self.carried:
            carried, self.carried = self.carried, b""
            self.data_received(carried)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.peer:
            self.server.peer_sessions.discard(self)
        elif self in self.server.sessions:
            self.server.sessions.discard(self)
            self.server.sessions_changed()
        for w in self.waiters:
            w.cancel()
        self.waiters.clear()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            if self.stalled:
                self._unstall()
            else:
                self.transport.resume_reading()

    def _backlogged(self) -> bool:
        t = self.transport
        return t is not None and self.out_pending + t.get_write_buffer_size() > OUT_HIGH_WATER

    def _unstall(self) -> None:
        """Decode the requests left in the buffer once the client has read enough."""
        if not self.stalled or self.closing or self.transport is None or self._backlogged():
            return
        self.stalled = False
        self.transport.resume_reading()
        self._process()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.decoder.feed(data)
        if not self.stalled:
            self._process()

    def _process(self) -> None:
        decoder = self.decoder
        try:
            while True:
                msg = decoder.next()
                if msg is None:
                    break
                self.last_frame = time.monotonic()
                self.frames += 1
                if type(msg) is Malformed:
                    self._nack(None, msg.error)
                else:
                    self._dispatch(msg)
                if self.closing:
                    break
                if self._backlogged():
                    # Answers pile up unread: stop here; send() or resume_writing resumes us.
                    self.stalled = True
                    if self.transport is not None:
                        self.transport.pause_reading()
                    break
        except ProtocolViolation as exc:
            self._fail_protocol(str(exc))

    def send(self, frame: bytes) -> None:
        self.out_pending -= len(frame)
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(frame)
            if self.stalled and not self.out_pending and self.server.loop is not None:
                self.server.loop.call_soon(self._unstall)

    def _reply(self, frame: bytes) -> None:
        self.out_pending += len(frame)
        self.server.reply(self, frame)

    def check_idle(self, now: float, limit: float) -> None:
        """Close a connection silent for ``limit`` s with nothing pending, or stuck mid-frame."""
        if now - self.last_frame < limit or self.transport is None:
            return
        if self.decoder.buffered or not any(not w.done for w in self.waiters):
            self.closing = True
            self.transport.close()

    # -- dispatch ----------------------------------------------------------------

    def _dispatch(self, msg: Message) -> None:
        rid = msg.rid
        try:
            if rid is None:
                rq.parse_rid(msg.header)  # raises BadRequest naming the field
            if self.permissions is None and msg.type is not MsgType.HELLO:
                raise Unauthorized("authentication required: send HELLO with a valid api_key first")
            perm = PERMISSION.get(msg.type)
            if perm is not None and self.permissions is not None and perm not in self.permissions \
                    and "admin" not in self.permissions:
                raise Forbidden(f"this API key lacks the '{perm}' permission for {msg.type.name}")
            rq.check_blob(msg.type, msg.header, msg.blob)
            answer = self._handlers[msg.type](msg)
        except WireError as err:
            self._nack(rid, err)
            return
        except Exception:
            log.exception("internal error on %s rid=%s", msg.type.name, rid)
            self._nack(rid, WireError("internal error; the server logged it"))
            return
        if answer is not None:
            body, blob = answer
            self._ack(rid, body, blob)

    def _ack(self, rid: int | None, body: dict[str, Any], blob: bytes = b"") -> None:
        header = {"rid": rid}
        header.update(body)
        self._reply(encode(MsgType.ACK, header, blob))

    def _later(self, rid: int | None, coro: Any) -> None:
        """Answer ``rid`` when ``coro`` (routed work) returns its (body, blob)."""
        async def run() -> None:
            try:
                body, blob = await coro
            except WireError as err:
                self._nack(rid, err)
            except Exception:
                log.exception("internal error on a routed request rid=%s", rid)
                self._nack(rid, WireError("internal error; the server logged it"))
            else:
                self._ack(rid, body, blob)
        self.server.spawn(run())

    def _nack(self, rid: int | None, err: WireError) -> None:
        self._reply(encode_nack(rid, err.code, err.message, **err.extra))
        if err.closes_connection:
            self._close_after_replies()

    def _fail_protocol(self, message: str) -> None:
        self._reply(encode_nack(None, "Protocol", message))
        self._close_after_replies()

    def _close_after_replies(self) -> None:
        """Stop reading now; close once the group commit has sent what is queued."""
        self.closing = True
        if self.transport is not None:
            self.transport.pause_reading()
        self.server.reply(self, b"")  # an empty frame marks where to close
        self.send = self._send_then_close  # type: ignore[method-assign]

    def _send_then_close(self, frame: bytes) -> None:
        self.out_pending -= len(frame)
        t = self.transport
        if t is None or t.is_closing():
            return
        if frame:
            t.write(frame)
        else:
            t.close()

    # -- handlers: each returns (header body, blob) or None when answered later ---

    def on_hello(self, msg: Message) -> Answer:
        h = msg.header
        rq.parse_hello(h)
        hint = h.get("shard")
        if (self.routed and self.frames == 1 and type(hint) is int and 0 <= hint < self.server.shards
                and hint != self.server.index and self._hand_over(hint, msg)):
            return None  # the shard it asked for answers this HELLO
        auth = self.server.cfg.auth
        if auth.enabled and not self.peer:
            key = h.get("api_key")
            match = next((k for k in auth.api_keys if k.key == key), None) if type(key) is str else None
            if match is None:
                raise Unauthorized("api_key is missing or not valid")
            self.permissions = frozenset(match.permissions)
        b = self.server.cfg.broker
        return {"server": f"shardq/{__version__}", "protocol": PROTOCOL_VERSION,
                "shard": self.server.index, "shards": self.server.shards, "max_frame": MAX_FRAME,
                "max_payload": self.engine.s.max_payload, "lease_ms": b.lease_timeout_ms,
                "heartbeat_ms": b.heartbeat_interval_ms}, b""

    def _hand_over(self, shard: int, hello: Message) -> bool:
        """Pass this connection, with its first frames, to ``shard`` (a shard-aware client)."""
        t = self.transport
        sock = t.get_extra_info("socket") if t is not None else None
        if t is None or sock is None:
            return False
        carried = encode(MsgType.HELLO, hello.header, hello.blob) + self.decoder.buffered_bytes()
        if not self.server.hand_over(sock.fileno(), shard, carried):
            return False
        self.decoder.take_rest()
        self.closing = True
        t.abort()  # our descriptor only: the connection lives on in the other shard
        return True

    def on_ping(self, msg: Message) -> Answer:
        return {}, b""

    def on_submit(self, msg: Message) -> Answer:
        specs = rq.parse_submit(msg.header, msg.blob, self.engine.s.max_payload)
        if self.peer:
            remote = msg.header.get("_remote_status") or {}
            ids = self.engine.submit(specs, now_ms(),
                                     remote_status={bytes.fromhex(k): v for k, v in remote.items()},
                                     check_depth=not msg.header.get("_skip_depth", False))
        elif self.routed and not self._all_local(specs):
            self._later(msg.rid, self._routed_submit(specs, msg.header["tasks"]))
            return None
        else:
            ids = self.engine.submit(specs, now_ms())
        return {"ids": [id_to_str(i) for i in ids]}, b""

    def _all_local(self, specs: list[Any]) -> bool:
        owns = self.server.owns
        for spec in specs:
            if spec.id is not None and not owns(spec.id):
                return False
            for dep in spec.depends_on:
                if not owns(dep):
                    return False
        return True

    async def _routed_submit(self, specs: list[Any], raw: list[dict[str, Any]]) -> tuple[dict[str, Any], bytes]:
        return {"ids": await routing.submit(self.server, specs, raw)}, b""

    def on_claim(self, msg: Message) -> Answer:
        worker_id, max_tasks, wait_ms, types = rq.parse_claim(msg.header)
        rid = msg.rid
        if not self.peer:
            self.server.worker_heard(worker_id)
        if self.routed:
            type_set = frozenset(types) if types is not None else None
            better = self._better_elsewhere(type_set)
            if better:
                # Another shard reported work of a higher priority tier: serve that first.
                self.server.spawn(self._claim_better(rid, worker_id, max_tasks, wait_ms, type_set, better))
                return None
            got = self.engine.claim(worker_id, max_tasks, type_set, now_ms())
            if got:
                if len(got) < max_tasks and self._others_have(type_set) and \
                        sum(t.payload_len for t, _ in got) < MAX_FRAME // 2:
                    # Fill the claim from shards that reported ready work of these types.
                    self.server.spawn(self._top_up(rid, worker_id, got, max_tasks - len(got), type_set))
                    return None
                return self._claim_answer(got)
            # Nothing here: ask the other shards before answering empty or waiting.
            self.server.spawn(self._claim_across(rid, worker_id, max_tasks, wait_ms, type_set,
                                                 now_ms() + wait_ms))
            return None
        self._wait_for_claim(rid, worker_id, max_tasks, wait_ms, types)
        return None

    def _better_elsewhere(self, types: frozenset[str] | None) -> list[int]:
        """Shards whose reported best ready tier (of these types) beats this shard's best,
        best first; empty when this shard has nothing ready (the plain cross-shard path)."""
        others = self.server.others_ready
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

    async def _claim_better(self, rid: int | None, worker_id: str, max_tasks: int, wait_ms: int,
                            types: frozenset[str] | None, shards: list[int]) -> None:
        try:
            tasks, blob = await routing.claim_remote(self.server, worker_id, max_tasks, types, shards)
        except Exception:
            log.exception("cross-shard claim failed")
            tasks, blob = [], b""
        got = []
        if len(tasks) < max_tasks and len(blob) < MAX_FRAME // 2 and not self.closing:
            got = self.engine.claim(worker_id, max_tasks - len(tasks), types, now_ms())
            if got:
                self.server.mutated()
        if self.closing:
            if got:
                self.engine.result(worker_id, [_release(t) for t, _ in got], now_ms())
                self.server.mutated()
            if tasks:
                await routing.release_remote(self.server, worker_id, tasks)
            return
        if not tasks and not got:
            await self._claim_across(rid, worker_id, max_tasks, wait_ms, types, now_ms() + wait_ms)
            return
        body, local_blob = self._claim_answer(got)
        self._ack(rid, {"tasks": tasks + body["tasks"]}, blob + local_blob)

    def _others_have(self, types: frozenset[str] | None) -> bool:
        return any(types is None or not types.isdisjoint(t) for t in self.server.others_ready.values())

    async def _top_up(self, rid: int | None, worker_id: str, got: list[tuple[Task, bytes]], more: int,
                      types: frozenset[str] | None) -> None:
        shards = [i for i, t in self.server.others_ready.items() if types is None or not types.isdisjoint(t)]
        try:
            tasks, blob = await routing.claim_remote(self.server, worker_id, more, types, shards)
        except Exception:
            log.exception("cross-shard claim failed")
            tasks, blob = [], b""
        body, local_blob = self._claim_answer(got)
        if tasks and len(local_blob) + len(blob) + 2048 * (len(got) + len(tasks)) > MAX_FRAME:
            self.server.spawn(routing.release_remote(self.server, worker_id, tasks))  # would not fit
            tasks, blob = [], b""
        if self.closing:
            self.engine.result(worker_id, [_release(t) for t, _ in got], now_ms())
            self.server.mutated()
            if tasks:
                await routing.release_remote(self.server, worker_id, tasks)
            return
        body["tasks"].extend(tasks)
        self._ack(rid, body, local_blob + blob)

    def _claim_answer(self, got: list[tuple[Task, bytes]]) -> tuple[dict[str, Any], bytes]:
        return {"tasks": [t.to_wire(self.shard_of(t)) for t, _ in got]}, b"".join(p for _, p in got)

    def _wait_for_claim(self, rid: int | None, worker_id: str, max_tasks: int, wait_ms: int,
                        types: Any) -> None:
        def deliver(got: list[tuple[Task, bytes]]) -> None:
            if waiter_box:
                self.waiters.discard(waiter_box[0])
            if self.closing:
                # The connection is gone: put the tasks back rather than lose a lease's time.
                if got:
                    self.engine.result(worker_id, [_release(t) for t, _ in got], now_ms())
                    self.server.mutated()
                return
            body, blob = self._claim_answer(got)
            self._ack(rid, body, blob)

        def deliver_remote(tasks: list[dict[str, Any]], blob: bytes) -> None:
            if waiter_box:
                self.waiters.discard(waiter_box[0])
            if self.closing:
                self.server.spawn(routing.release_remote(self.server, worker_id, tasks))
                return
            self._ack(rid, {"tasks": tasks}, blob)

        waiter_box: list[ClaimWaiter] = []
        waiter = self.engine.wait_for_claim(worker_id, max_tasks, types, wait_ms, now_ms(), deliver)
        if waiter is not None:
            if self.routed:
                waiter.on_remote = deliver_remote
            waiter_box.append(waiter)
            self.waiters.add(waiter)
            self.server.mutated()  # re-arm the timer for the waiter's deadline

    async def _claim_across(self, rid: int | None, worker_id: str, max_tasks: int, wait_ms: int,
                            types: frozenset[str] | None, deadline: int) -> None:
        try:
            tasks, blob = await routing.claim_remote(self.server, worker_id, max_tasks, types)
        except Exception:
            log.exception("cross-shard claim failed")
            tasks, blob = [], b""
        if tasks:
            if self.closing:
                await routing.release_remote(self.server, worker_id, tasks)
            else:
                self._ack(rid, {"tasks": tasks}, blob)
            return
        if self.closing:
            return
        self._wait_for_claim(rid, worker_id, max_tasks, max(0, deadline - now_ms()) if wait_ms else 0,
                             types)

    def shard_of(self, task: Task) -> int:
        return self.server.store.part_index(task.id)

    def on_result(self, msg: Message) -> Answer:
        worker_id, items = rq.parse_result(msg.header, msg.blob)
        if not self.peer:
            self.server.worker_heard(worker_id)
        if self.routed and not all(self.server.owns(it.id) for it in items):
            self._later(msg.rid, self._routed_result(worker_id, items, msg.header["results"]))
            return None
        return {"results": self.engine.result(worker_id, items, now_ms())}, b""

    async def _routed_result(self, worker_id: str, items: list[ResultItem],
                             raw: list[dict[str, Any]]) -> tuple[dict[str, Any], bytes]:
        return {"results": await routing.result(self.server, worker_id, items, raw)}, b""

    def on_heartbeat(self, msg: Message) -> Answer:
        worker_id, info, active = rq.parse_heartbeat(msg.header)
        if not self.peer:
            self.server.worker_heard(worker_id, info)
        if self.routed:
            self._later(msg.rid, self._routed_heartbeat(worker_id, info, active))
            return None
        expires, lost = self.engine.heartbeat(worker_id, info, active, now_ms())
        body: dict[str, Any] = {"lease_expires_ms": expires}
        if lost:
            body["lost"] = lost
        return body, b""

    async def _routed_heartbeat(self, worker_id: str, info: dict[str, Any],
                                active: list[bytes] | None) -> tuple[dict[str, Any], bytes]:
        expires, lost = await routing.heartbeat(self.server, worker_id, info, active)
        body: dict[str, Any] = {"lease_expires_ms": expires}
        if lost:
            body["lost"] = lost
        return body, b""

    def on_register(self, msg: Message) -> Answer:
        worker_id, info = rq.parse_register(msg.header)
        self.engine.register_worker(worker_id, info, now_ms())
        if not self.peer:
            self.server.worker_heard(worker_id, info)
        return {}, b""

    def on_deregister(self, msg: Message) -> Answer:
        worker_id = rq.parse_deregister(msg.header)
        if not self.peer:
            self.server.worker_gone(worker_id)
        if self.routed:
            async def routed() -> tuple[dict[str, Any], bytes]:
                return {"released": await routing.deregister(self.server, worker_id)}, b""
            self._later(msg.rid, routed())
            return None
        return {"released": self.engine.deregister_worker(worker_id, now_ms())}, b""

    def _query_local(self, ids: list[bytes]) -> tuple[list[dict[str, Any] | None], list[bytes]]:
        tasks = self.engine.query(ids)
        wire = [None if t is None else t.to_wire(self.shard_of(t)) for t in tasks]
        results = [self.engine.store.get_result(t.id) if t is not None and t.result_len else b""
                   for t in tasks]
        return wire, results

    def on_query(self, msg: Message) -> Answer:
        ids, with_result = rq.parse_query(msg.header)
        if self.routed and not all(self.server.owns(i) for i in ids):
            async def routed() -> tuple[dict[str, Any], bytes]:
                tasks, blob = await routing.query(self.server, ids, with_result, self._query_local)
                return {"tasks": tasks}, blob
            self._later(msg.rid, routed())
            return None
        if not with_result:
            tasks = self.engine.query(ids)
            return {"tasks": [None if t is None else t.to_wire(self.shard_of(t)) for t in tasks]}, b""
        wire, results = self._query_local(ids)
        blob = b"".join(results)
        if len(blob) + 5 + 2048 * len(ids) > MAX_FRAME:
            raise TooLarge(f"the results of these tasks add up to {len(blob)} bytes, more than "
                           "one frame holds; ask for fewer ids at a time")
        return {"tasks": wire}, blob

    def on_cancel(self, msg: Message) -> Answer:
        raw = rq.parse_cancel(msg.header)
        if self.routed and not self.server.owns(raw):
            async def routed() -> tuple[dict[str, Any], bytes]:
                return await routing.cancel(self.server, raw), b""
            self._later(msg.rid, routed())
            return None
        self.engine.cancel(raw, now_ms())
        return {"id": id_to_str(raw), "status": "cancelled"}, b""

    def on_list(self, msg: Message) -> Answer:
        status, task_type, lo, hi, limit, cursor = rq.parse_list(msg.header)
        tasks, nxt = self.engine.list_tasks(status, task_type, lo, hi, limit, cursor)
        page = [t.to_wire(self.shard_of(t)) for t in tasks]
        if self.routed:
            async def routed() -> tuple[dict[str, Any], bytes]:
                return await routing.list_tasks(self.server, msg.header, limit, (page, nxt)), b""
            self._later(msg.rid, routed())
            return None
        return {"tasks": page, "cursor": nxt}, b""

    def on_stats(self, msg: Message) -> Answer:
        detail = rq.parse_stats(msg.header)
        coordinator = self.server.coordinator
        if self.peer or coordinator is None:
            stats = self.server.stats()
            if self.peer:
                stats["row"] = self.server.stats_row()  # what the asking shard merges
            if detail:
                stats["worker_list"] = [w.to_wire() for w in self.engine.workers()]
            return stats, b""

        async def with_others() -> tuple[dict[str, Any], bytes]:
            # Counts come fresh from every shard (cheap: one mesh round trip each);
            # the workers from the coordinator's registry.
            self.server.flush_report()  # workers heard just now reach the registry first
            peers = self.server.peers.others() if self.server.peers is not None else []
            answers = await asyncio.gather(
                coordinator.request(MsgType.GET_STATS, {}),
                *(self.server.peers.request(i, MsgType.GET_STATS, {}) for i in peers),  # type: ignore[union-attr]
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
            stats = self.server.stats(others)
            if detail:
                stats["worker_list"] = worker_list(others.get("worker_list"), rows, self.server.stats_row(),
                                                   self.engine.workers())
            return stats, b""
        self._later(msg.rid, with_others())
        return None

    def _requeue_local(self, ids: list[bytes]) -> list[dict[str, Any]]:
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

    def on_requeue(self, msg: Message) -> Answer:
        ids, status, task_type, limit = rq.parse_requeue(msg.header)
        if ids is not None:
            if self.routed and not all(self.server.owns(i) for i in ids):
                async def routed() -> tuple[dict[str, Any], bytes]:
                    return await routing.requeue_ids(self.server, ids, self._requeue_local), b""
                self._later(msg.rid, routed())
                return None
            results = self._requeue_local(ids)
            return {"requeued": sum(1 for r in results if "error" not in r), "results": results}, b""
        # Without ids the scan runs in bounded slices across loop turns.
        self.server.spawn(self._requeue_scan(msg.rid, status, task_type, limit))
        return None

    async def _requeue_scan(self, rid: int | None, status: int, task_type: str | None,
                            limit: int) -> None:
        total = 0
        after: bytes | None = None
        try:
            while total < limit:
                # At most REQUEUE_SLICE per loop turn (each requeue is a record move);
                # the group commit runs between slices.
                n, after = self.engine.requeue_slice(status, task_type,
                                                     min(limit - total, REQUEUE_SLICE), after, now_ms())
                total += n
                self.server.mutated()
                if after is None:
                    break
                await asyncio.sleep(0)
            if self.routed and total < limit:
                total += await routing.requeue_elsewhere(self.server, status, task_type, limit - total)
        except WireError as err:
            self._nack(rid, err)
            return
        except Exception:
            log.exception("requeue scan failed")
            self._nack(rid, WireError("internal error; the server logged it"))
            return
        self._ack(rid, {"requeued": total})


WORKER_KEYS = ("worker_id", "hostname", "pid", "types", "concurrency", "first_seen_ms", "last_seen_ms",
               "cpu_percent", "memory_rss", "memory_percent", "state")


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


def _release(task: Task) -> ResultItem:
    return ResultItem(task.id, task.attempt, "released")


__all__ = ["Session", "BadRequest", "Unavailable"]
