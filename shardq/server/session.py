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
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardq import __version__
from shardq.engine.engine import ClaimWaiter, ResultItem, Task
from shardq.errors import (
    BadRequest,
    Forbidden,
    InvalidState,
    NotFound,
    ProtocolError,
    ProtocolViolation,
    TooLarge,
    Unauthorized,
    Unavailable,
    WireError,
)
from shardq.protocol import requests as rq
from shardq.protocol.frames import (
    MAX_FRAME,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    FrameDecoder,
    Malformed,
    Message,
    MsgType,
    encode,
    encode_nack,
)
from shardq.server.shard import now_ms
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


class Session(asyncio.Protocol):
    def __init__(self, server: ShardServer) -> None:
        self.server = server
        self.engine = server.engine
        self.shard = 0
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.home = 0
        self.last_frame = time.monotonic()
        self.waiters: set[ClaimWaiter] = set()
        self.permissions: frozenset[str] | None = None if server.cfg.auth.enabled else frozenset(
            ("submit", "claim", "read", "admin"))
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
        self.home = self.server.next_home()
        self.server.sessions.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.sessions.discard(self)
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
        if h.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {h.get('protocol')!r} is not supported "
                                    f"(this server speaks {PROTOCOL_VERSION})")
        auth = self.server.cfg.auth
        if auth.enabled:
            key = h.get("api_key")
            match = next((k for k in auth.api_keys if k.key == key), None) if type(key) is str else None
            if match is None:
                raise Unauthorized("api_key is missing or not valid")
            self.permissions = frozenset(match.permissions)
        b = self.server.cfg.broker
        return {"server": f"shardq/{__version__}", "protocol": PROTOCOL_VERSION, "shard": self.home,
                "shards": self.server.shards, "max_frame": MAX_FRAME, "max_payload": MAX_PAYLOAD,
                "lease_ms": b.lease_timeout_ms, "heartbeat_ms": b.heartbeat_interval_ms}, b""

    def on_ping(self, msg: Message) -> Answer:
        return {}, b""

    def on_submit(self, msg: Message) -> Answer:
        specs = rq.parse_submit(msg.header, msg.blob, self.engine.s.max_payload)
        ids = self.engine.submit(specs, now_ms(), home=self.home)
        return {"ids": [id_to_str(i) for i in ids]}, b""

    def on_claim(self, msg: Message) -> Answer:
        worker_id, max_tasks, wait_ms, types = rq.parse_claim(msg.header)
        rid = msg.rid

        def deliver(got: list[tuple[Task, bytes]]) -> None:
            if waiter_box:
                self.waiters.discard(waiter_box[0])
            if self.closing:
                # The connection is gone: put the tasks back rather than lose a lease's time.
                if got:
                    self.engine.result(worker_id, [_release(t) for t, _ in got], now_ms())
                    self.server.mutated()
                return
            self._ack(rid, {"tasks": [t.to_wire(self.shard_of(t)) for t, _ in got]},
                      b"".join(p for _, p in got))

        waiter_box: list[ClaimWaiter] = []
        waiter = self.engine.wait_for_claim(worker_id, max_tasks, types, wait_ms, now_ms(), deliver)
        if waiter is not None:
            waiter_box.append(waiter)
            self.waiters.add(waiter)
            self.server.mutated()  # re-arm the timer for the waiter's deadline
        return None

    def shard_of(self, task: Task) -> int:
        return self.server.store.part_index(task.id)

    def on_result(self, msg: Message) -> Answer:
        worker_id, items = rq.parse_result(msg.header, msg.blob)
        return {"results": self.engine.result(worker_id, items, now_ms())}, b""

    def on_heartbeat(self, msg: Message) -> Answer:
        worker_id, info, active = rq.parse_heartbeat(msg.header)
        expires, lost = self.engine.heartbeat(worker_id, info, active, now_ms())
        body: dict[str, Any] = {"lease_expires_ms": expires}
        if lost:
            body["lost"] = lost
        return body, b""

    def on_register(self, msg: Message) -> Answer:
        worker_id, info = rq.parse_register(msg.header)
        self.engine.register_worker(worker_id, info, now_ms())
        return {}, b""

    def on_deregister(self, msg: Message) -> Answer:
        worker_id = rq.get_str(msg.header, "worker_id", "", rq.MAX_WORKER_ID_LEN)
        return {"released": self.engine.deregister_worker(worker_id, now_ms())}, b""

    def on_query(self, msg: Message) -> Answer:
        ids, with_result = rq.parse_query(msg.header)
        tasks = self.engine.query(ids)
        wire = [None if t is None else t.to_wire(self.shard_of(t)) for t in tasks]
        blob = b""
        if with_result:
            parts = [self.engine.store.get_result(t.id) for t in tasks
                     if t is not None and t.result_len]
            blob = b"".join(parts)
            if len(blob) + 5 + 2048 * len(ids) > MAX_FRAME:
                raise TooLarge(f"the results of these tasks add up to {len(blob)} bytes, more than "
                               "one frame holds; ask for fewer ids at a time")
        return {"tasks": wire}, blob

    def on_cancel(self, msg: Message) -> Answer:
        raw = rq.parse_id(msg.header.get("id"), "id")
        self.engine.cancel(raw, now_ms())
        return {"id": id_to_str(raw), "status": "cancelled"}, b""

    def on_list(self, msg: Message) -> Answer:
        status, task_type, lo, hi, limit, cursor = rq.parse_list(msg.header)
        tasks, nxt = self.engine.list_tasks(status, task_type, lo, hi, limit, cursor)
        return {"tasks": [t.to_wire(self.shard_of(t)) for t in tasks], "cursor": nxt}, b""

    def on_stats(self, msg: Message) -> Answer:
        stats = self.server.stats()
        if rq.get_bool(msg.header, "workers_detail", "", False):  # shardq extension
            stats["worker_list"] = [w.to_wire() for w in self.engine.workers()]
        return stats, b""

    def on_requeue(self, msg: Message) -> Answer:
        ids, status, task_type, limit = rq.parse_requeue(msg.header)
        now = now_ms()
        if ids is not None:
            results: list[dict[str, Any]] = []
            count = 0
            for raw in ids:
                sid = id_to_str(raw)
                try:
                    self.engine.requeue(raw, now)
                except (NotFound, InvalidState) as err:
                    results.append({"id": sid, "error": err.to_wire()})
                else:
                    count += 1
                    results.append({"id": sid, "status": "pending"})
            return {"requeued": count, "results": results}, b""
        # Without ids the scan runs in bounded slices across loop turns.
        asyncio.get_running_loop().create_task(
            self._requeue_scan(msg.rid, status, task_type, limit))
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
        except Exception:
            log.exception("requeue scan failed")
            self._nack(rid, WireError("internal error; the server logged it"))
            return
        self._ack(rid, {"requeued": total})


def _release(task: Task) -> ResultItem:
    return ResultItem(task.id, task.attempt, "released")


__all__ = ["Session", "BadRequest", "Unavailable"]
