"""One connection of the TCP protocol: framing, backpressure and connection state.

Rules:
1. Bytes go into the sans-I/O decoder; each decoded request is parsed into typed arguments
   (protocol/requests.py), run by the operations layer (operations.py), and its answer is
   handed to the shard's group commit (``ShardServer.reply``), never written directly. What a
   request *does* lives in operations.py; this file only translates.
2. Bad input costs only this connection: a Malformed frame or a bad field is a NACK and the
   connection goes on; a framing error is a NACK and a close; anything unexpected is an
   Internal NACK, logged, and the connection goes on.
3. A client that does not read its answers slows itself down: when its answers in flight
   (queued for the group commit plus the transport's write buffer) pass OUT_HIGH_WATER we stop
   decoding and reading its requests, and go on once it has read them.
4. An operation that must wait or cross shards answers later, out of order, which the protocol
   allows. A *peer* session serves requests forwarded by another shard over the mesh.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shardq import __version__
from shardq.errors import ProtocolError, ProtocolViolation, Unauthorized, WireError
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
from shardq.server.claims import Caller, Claimed
from shardq.server.operations import Identity, Operations, Page, Queried
from shardq.task import id_to_str

if TYPE_CHECKING:
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.session")

Body = tuple[dict[str, Any], bytes]

# Bytes of answers one connection may have in flight (queued for the group commit plus the
# transport's write buffer) before we stop decoding its requests: answers are built before
# the transport sees them, so the transport's own high-water mark alone bounds nothing.
OUT_HIGH_WATER = 4 * MAX_FRAME


# -- how each operation's result goes on the wire ------------------------------------------------

def _ids(ids: list[str]) -> Body:
    return {"ids": ids}, b""


def _claimed(c: Claimed) -> Body:
    return {"tasks": c.tasks}, c.payloads


def _results(results: list[dict[str, Any]]) -> Body:
    return {"results": results}, b""


def _heartbeat(answer: tuple[int, list[str]]) -> Body:
    expires, lost = answer
    body: dict[str, Any] = {"lease_expires_ms": expires}
    if lost:
        body["lost"] = lost
    return body, b""


def _queried(q: Queried) -> Body:
    return {"tasks": q.tasks}, q.results


def _page(p: Page) -> Body:
    return {"tasks": p.tasks, "cursor": p.cursor}, b""


def _as_is(body: dict[str, Any]) -> Body:
    return body, b""


def _released(n: int) -> Body:
    return {"released": n}, b""


class Session(asyncio.Protocol, Caller):
    def __init__(self, server: ShardServer, ops: Operations, peer: bool = False,
                 carried: bytes = b"") -> None:
        Caller.__init__(self)
        self.server = server
        self.ops = ops
        self.peer = peer
        self.carried = carried  # bytes read by the shard that handed this connection over
        self.frames = 0
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.last_frame = time.monotonic()
        self.identity: Identity | None = ops.initial_identity()
        self.later: set[asyncio.Future[Any]] = set()  # answers on their way (routed, waiting)
        self.out_pending = 0  # bytes of answers handed to the group commit, not yet written
        self.stalled = False  # stopped decoding until the client reads its answers
        self._handlers: dict[MsgType, Callable[[Message], None]] = {
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
        if self.peer:
            self.server.peer_sessions.discard(self)
        elif self in self.server.sessions:
            self.server.sessions.discard(self)
            self.server.sessions_changed()
        self.hang_up()

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
        if self.decoder.buffered or not any(not w.done() for w in self.waiters):
            self.closing = True
            self.transport.close()

    # -- dispatch ----------------------------------------------------------------

    def _dispatch(self, msg: Message) -> None:
        rid = msg.rid
        try:
            if rid is None:
                rq.parse_rid(msg.header)  # raises BadRequest naming the field
            if self.identity is None and msg.type is not MsgType.HELLO:
                raise Unauthorized("authentication required: send HELLO with a valid api_key first")
            self._handlers[msg.type](msg)
        except WireError as err:
            self._nack(rid, err)
        except Exception:
            log.exception("internal error on %s rid=%s", msg.type.name, rid)
            self._nack(rid, WireError("internal error; the server logged it"))

    def _answer(self, rid: int | None, result: Any, build: Callable[[Any], Body]) -> None:
        """ACK ``rid`` with ``build(result)`` now, or once ``result`` (an awaitable) is done."""
        if hasattr(result, "__await__"):
            fut = asyncio.ensure_future(result)
            self.later.add(fut)
            fut.add_done_callback(functools.partial(self._answer_later, rid, build))
            return
        body, blob = build(result)
        self._ack(rid, body, blob)

    def _answer_later(self, rid: int | None, build: Callable[[Any], Body], fut: asyncio.Future[Any]) -> None:
        self.later.discard(fut)
        if fut.cancelled():
            return  # a waiting claim whose connection closed
        err = fut.exception()
        try:
            if err is not None:
                raise err
            result = fut.result()
            if result is None:
                return  # the caller went away meanwhile; what it was given went back
            if self.server.last_flush_failed():
                raise self.server.unavailable()  # its writes may be among those rolled back
            body, blob = build(result)
        except WireError as exc:
            self._nack(rid, exc)
        except Exception as exc:
            log.error("internal error on a routed request rid=%s", rid, exc_info=exc)
            self._nack(rid, WireError("internal error; the server logged it"))
        else:
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

    # -- requests: parse, run the operation, answer ------------------------------

    def on_hello(self, msg: Message) -> None:
        h = msg.header
        if h.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {h.get('protocol')!r} is not supported "
                                f"(this server speaks {PROTOCOL_VERSION})")
        hint = h.get("shard")
        server = self.server
        if (self.ops.routed and self.frames == 1 and type(hint) is int and 0 <= hint < server.shards
                and hint != server.index and self._hand_over(hint, msg)):
            return  # the shard it asked for answers this HELLO
        self.identity = self.ops.authenticate(h.get("api_key"))
        b = server.cfg.broker
        self._ack(msg.rid, {"server": f"shardq/{__version__}", "protocol": PROTOCOL_VERSION,
                            "shard": server.index, "shards": server.shards, "max_frame": MAX_FRAME,
                            "max_payload": MAX_PAYLOAD, "lease_ms": b.lease_timeout_ms,
                            "heartbeat_ms": b.heartbeat_interval_ms})

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

    def on_ping(self, msg: Message) -> None:
        self._ack(msg.rid, {})

    def on_submit(self, msg: Message) -> None:
        specs = rq.parse_submit(msg.header, msg.blob, self.server.engine.s.max_payload)
        assert self.identity is not None
        if self.peer:
            remote = msg.header.get("_remote_status") or {}
            ids = self.ops.store_part(specs, {bytes.fromhex(k): v for k, v in remote.items()},
                                      check_depth=not msg.header.get("_skip_depth", False))
            self._ack(msg.rid, {"ids": ids})
            return
        self._answer(msg.rid, self.ops.submit(self.identity, specs), _ids)

    def on_claim(self, msg: Message) -> None:
        worker_id, max_tasks, wait_ms, types = rq.parse_claim(msg.header)
        assert self.identity is not None
        self._answer(msg.rid, self.ops.claim(self.identity, self, worker_id, max_tasks, wait_ms,
                                             frozenset(types) if types is not None else None), _claimed)

    def on_result(self, msg: Message) -> None:
        worker_id, items = rq.parse_result(msg.header, msg.blob)
        assert self.identity is not None
        self._answer(msg.rid, self.ops.result(self.identity, worker_id, items), _results)

    def on_heartbeat(self, msg: Message) -> None:
        worker_id, info, active = rq.parse_heartbeat(msg.header)
        assert self.identity is not None
        self._answer(msg.rid, self.ops.heartbeat(self.identity, worker_id, info, active), _heartbeat)

    def on_register(self, msg: Message) -> None:
        worker_id, info = rq.parse_register(msg.header)
        assert self.identity is not None
        self.ops.register(self.identity, worker_id, info)
        self._ack(msg.rid, {})

    def on_deregister(self, msg: Message) -> None:
        worker_id = rq.get_str(msg.header, "worker_id", "", rq.MAX_WORKER_ID_LEN)
        assert self.identity is not None
        self._answer(msg.rid, self.ops.deregister(self.identity, worker_id), _released)

    def on_query(self, msg: Message) -> None:
        ids, with_result = rq.parse_query(msg.header)
        assert self.identity is not None
        self._answer(msg.rid, self.ops.query(self.identity, ids, with_result), _queried)

    def on_cancel(self, msg: Message) -> None:
        raw = rq.parse_id(msg.header.get("id"), "id")
        assert self.identity is not None
        self._answer(msg.rid, self.ops.cancel(self.identity, raw),
                     lambda status: ({"id": id_to_str(raw), "status": status}, b""))

    def on_list(self, msg: Message) -> None:
        status, task_type, lo, hi, limit, cursor = rq.parse_list(msg.header)
        assert self.identity is not None
        self._answer(msg.rid, self.ops.list_tasks(self.identity, status, task_type, lo, hi, limit, cursor),
                     _page)

    def on_stats(self, msg: Message) -> None:
        detail = rq.get_bool(msg.header, "workers_detail", "", False)  # shardq extension
        assert self.identity is not None
        self._answer(msg.rid, self.ops.stats(self.identity, detail), _as_is)

    def on_requeue(self, msg: Message) -> None:
        ids, status, task_type, limit = rq.parse_requeue(msg.header)
        assert self.identity is not None
        self._answer(msg.rid, self.ops.requeue(self.identity, ids, status, task_type, limit), _as_is)


__all__ = ["Session", "OUT_HIGH_WATER"]
