"""One connection of the TCP protocol: framing, backpressure and connection state.

Rules:
1. Bytes go into the sans-I/O decoder; each decoded request is parsed into typed arguments
   (protocol/requests.py), run by the operations layer (operations.py), and its answer is
   handed to the shard's group commit (``ShardServer.reply``), never written directly. What a
   request *does* lives in operations.py; this file only translates.
2. Bad input costs only this connection: a Malformed frame or a bad field is a NACK and the
   connection goes on; a framing error is a NACK and a close; anything unexpected is an
   Internal NACK, logged, and the connection goes on.
3. A client that does not read its answers slows itself down. What it holds counts from the
   moment a request is decoded: an estimate reserved for each request answered later
   (``_estimate``), then its answer queued for the group commit, then the transport's write
   buffer. Past OUT_HIGH_WATER, or past its share of the shard's output budget (budget.py), we
   stop decoding and reading its requests, and go on once it has read them.
4. Memory for requests not yet complete is bounded too: a frame larger than SMALL_FRAME waits for
   room in the shard's input budget before we read more of it, and before its HELLO (auth on) a
   connection may announce no frame larger than MAX_FRAME_BEFORE_HELLO.
5. One connection decodes for at most SLICE_S per loop turn, then lets the others run.
6. Idle means silent: no frame for ``connection_timeout`` and nothing in hand (no request
   answered later, no answer queued or unread, no frame decoded-to-be). A frame left half-sent
   that long (counted while we are reading it) is closed whatever else is in hand.
7. An operation that must wait or cross shards answers later, out of order, which the protocol
   allows. A *peer* session serves requests forwarded by another shard over the mesh; budgets
   and the idle sweep are for client connections only.
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
from shardq.errors import ProtocolViolation, Unauthorized, WireError
from shardq.protocol import requests as rq
from shardq.protocol import typed
from shardq.protocol.features import FEATURES
from shardq.protocol.frames import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    FrameDecoder,
    Malformed,
    Message,
    MsgType,
    RawFrame,
    encode,
    encode_nack,
    parse_header,
)
from shardq.protocol.task_options import parse_claim_options
from shardq.server import answers
from shardq.server.answers import Body
from shardq.server.budget import SMALL_ANSWER_ESTIMATE, SMALL_FRAME, answer_estimate, typed_estimate
from shardq.server.claims import Caller
from shardq.server.operations import Identity, Operations
from shardq.server.session_auth import SessionAuth
from shardq.server.session_controls import SessionControls
from shardq.server.session_insight import SessionInsight
from shardq.server.session_requests import SessionRequests
from shardq.server.session_schedules import SessionSchedules
from shardq.specs import ResultItem, TaskSpec

if TYPE_CHECKING:
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.session")

# Bytes of answers one connection may have in flight (queued for the group commit plus the
# transport's write buffer) before we stop decoding its requests: answers are built before
# the transport sees them, so the transport's own high-water mark alone bounds nothing.
OUT_HIGH_WATER = 4 * MAX_FRAME
# Before its HELLO, when auth is on, a connection may announce frames up to this length: a HELLO
# is a few hundred bytes, and a stranger must not make us buffer 16 MiB (Unauthorized beyond it).
MAX_FRAME_BEFORE_HELLO = SMALL_FRAME
# Longest a connection decodes in one loop turn before the others get theirs (seastar calls
# more than 20 ms without yielding a stall; PINGs of other clients wait for this much at most).
SLICE_S = 0.002

class Session(asyncio.Protocol, Caller, SessionAuth, SessionRequests, SessionSchedules, SessionInsight,
              SessionControls):
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
        self.last_active = time.monotonic()  # the last frame, or the last sweep that found it busy
        self.partial_since: float | None = None  # when the half-sent frame we are reading began
        self.identity: Identity | None = ops.initial_identity()
        self.later: set[asyncio.Future[Any]] = set()  # answers on their way (routed, waiting)
        self.out_pending = 0  # bytes of answers handed to the group commit, not yet written
        self.slot = False  # holds one of the acceptor's max_connections slots (ShardServer.adopt)
        self.reserved = 0  # estimates for the requests in ``later``
        self.held = 0  # out_pending + reserved + write buffer, as the output budget last saw it
        self.stalled = False  # stopped decoding: answers unread, or its slice of the turn is over
        self.write_paused = False  # the transport's write buffer is over its high-water mark
        self.in_reserved = 0  # input budget reserved for the large frame being read
        self.waiting_input = False  # waiting for input budget before reading more
        self.lost = False  # connection_lost has run: nothing of ours is counted any more
        self._cost = SMALL_ANSWER_ESTIMATE  # the estimate of the request being dispatched
        self._unstall_soon = False
        self._handlers: dict[MsgType, Callable[[Message], None]] = {
            MsgType.HELLO: self.on_hello, MsgType.SUBMIT: self.on_submit,
            MsgType.CLAIM: self.on_claim, MsgType.RESULT: self.on_result,
            MsgType.HEARTBEAT: self.on_heartbeat, MsgType.QUERY_STATUS: self.on_query,
            MsgType.CANCEL: self.on_cancel, MsgType.LIST_TASKS: self.on_list,
            MsgType.GET_STATS: self.on_stats, MsgType.REGISTER_WORKER: self.on_register,
            MsgType.DEREGISTER_WORKER: self.on_deregister, MsgType.REQUEUE: self.on_requeue,
            MsgType.PING: self.on_ping, MsgType.WORKER_CONTROL: self.on_worker_control,
            MsgType.EXPLAIN: self.on_explain,  # session_requests.py
            **self.insight_handlers(),
        }
        self._handlers.update(self.control_handlers())  # session_controls.py
        self._handlers.update(self.schedule_handlers())
        self._typed: dict[MsgType, Callable[[Any], None]] = {
            MsgType.SUBMIT: self._submit, MsgType.CLAIM: self._claim, MsgType.RESULT: self._result}

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
        # The acceptor admits connections against max_connections for the whole server
        # (acceptor.py): one handed to us, by it or by another shard, has a slot already.
        # This bound is only a guard should its count ever fall short (a restarted acceptor
        # learns the shards' counts from them): no one shard holds more than the limit.
        # Under mutual TLS, a client without a certificate is refused before we read a byte.
        tls = self.server.tls
        refusal = tls.refuses(transport.get_extra_info("peercert")) if tls is not None else None
        if refusal is not None or self.server.closing or (
                len(self.server.sessions) >= self.server.cfg.broker.max_connections):
            transport.write(encode_nack(None, "Unauthorized", refusal) if refusal else encode_nack(
                None, "Unavailable", "server is shutting down" if self.server.closing else "too many connections"))
            transport.close()
            self.closing = True
            return
        self.server.sessions.add(self)
        if self.carried:
            carried, self.carried = self.carried, b""
            self.data_received(carried)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer:
            self.server.peer_sessions.discard(self)
        else:
            self.server.sessions.discard(self)
            self.give_back_slot()
        self.lost = True
        self.hang_up()
        if not self.peer:
            self.server.out_budget.forget(self)
            self.server.in_budget.forget(self)
            self._give_back_input()
        allocated = self.decoder.allocated
        self.decoder.take_rest()  # the buffer goes now, not when the last reference does
        self.server.trimmer.freed(allocated)

    def give_back_slot(self) -> None:
        """This connection ended here: the acceptor may admit another in its place."""
        if self.slot:
            self.slot = False
            self.server.slot_released()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._set_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.stalled:
            self._unstall()
        else:
            self._set_reading()

    def _set_reading(self) -> None:
        """Read while nothing holds us back (each reason clears itself, then calls this)."""
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.closing or self.stalled or self.write_paused or self.waiting_input:
            t.pause_reading()
        else:
            t.resume_reading()

    # -- what this connection holds (budget.py) --------------------------------------

    def recount(self) -> int:
        """Bytes held for this connection's answers: reserved, queued, and in the write buffer."""
        t = self.transport
        return self.out_pending + self.reserved + (t.get_write_buffer_size() if t is not None else 0)

    def _account(self) -> int:
        """Count what we hold now, and tell the shard's output budget."""
        t = self.transport  # recount(), inlined: this runs twice per request
        held = self.out_pending + self.reserved + (t.get_write_buffer_size() if t is not None else 0)
        if held != self.held and not self.peer and not self.lost:
            self.held = held
            self.server.out_budget.set(self, held)
        return held

    def _backlogged(self) -> bool:
        held = self._account()
        if held > OUT_HIGH_WATER:
            return True
        if not self.peer and self.server.out_budget.over(held):
            self.server.out_budget.wait(self)  # woken when the shard's total is under its budget
            return True
        return False

    def wake(self) -> None:
        """Room again (the client read, the budget has some, or our slice is over): decode on,
        next loop turn."""
        if self.stalled and not self._unstall_soon and self.server.loop is not None:
            self._unstall_soon = True
            self.server.loop.call_soon(self._unstall)

    def _unstall(self) -> None:
        """Decode the requests left in the buffer once the client has read enough."""
        self._unstall_soon = False
        if not self.stalled or self.closing or self.transport is None or self._backlogged():
            return
        self.stalled = False
        self._set_reading()
        self._process()

    def granted(self, n: int) -> None:
        """The input budget reserved ``n`` bytes for the large frame we wait to read."""
        self.in_reserved = n
        self.waiting_input = False
        if self.closing:
            self._give_back_input()
            return
        self.partial_since = time.monotonic()
        self._set_reading()

    def _give_back_input(self) -> None:
        if self.in_reserved:
            n, self.in_reserved = self.in_reserved, 0
            self.server.in_budget.give_back(n)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.decoder.feed(data)
        if not self.stalled and not self.waiting_input:
            self._process()

    def _process(self) -> None:
        decoder = self.decoder
        started = time.perf_counter()
        try:
            while True:
                msg = decoder.next_raw()
                if msg is None:
                    self._need_more()
                    break
                self.last_active = time.monotonic()
                self.partial_since = None
                self.frames += 1
                if self.in_reserved:
                    self.server.trimmer.freed(self.in_reserved)  # a large frame, freed soon
                    self._give_back_input()
                if isinstance(msg, Malformed):
                    self._nack(None, msg.error)
                else:
                    self._dispatch(msg)
                if self.closing:
                    break
                if self._backlogged():
                    # Answers pile up unread: stop here; send(), resume_writing or the budget
                    # resumes us.
                    self.stalled = True
                    self._set_reading()
                    break
                if decoder.buffered and time.perf_counter() - started > SLICE_S:
                    self.stalled = True  # our slice of this turn is over: the rest next turn
                    self._set_reading()
                    self.wake()
                    break
        except ProtocolViolation as exc:
            self._fail_protocol(str(exc))

    def _need_more(self) -> None:
        """The next frame is incomplete: decide whether we will buffer it, and from when."""
        if not self.decoder.buffered:
            return
        length = self.decoder.head_length
        if self.identity is None and length > MAX_FRAME_BEFORE_HELLO:
            self._nack(None, Unauthorized(
                f"a frame of {length} bytes before HELLO: authenticate first (at most "
                f"{MAX_FRAME_BEFORE_HELLO} bytes until then)"))
            return
        if length > SMALL_FRAME and not self.in_reserved and not self.peer:
            if not self.server.in_budget.take(self, length):
                self.waiting_input = True  # granted() resumes us; the half-sent clock waits too
                self.partial_since = None
                self._set_reading()
                return
            self.in_reserved = length
        if self.partial_since is None:
            self.partial_since = time.monotonic()

    def send(self, frame: bytes) -> None:
        self.out_pending -= len(frame)
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(frame)
        self._account()
        if self.stalled:
            self.wake()

    def send_all(self, frames: list[bytes]) -> None:
        """Several answers of one group commit, in one write."""
        if self.closing:  # one of them may be the empty frame that marks where to close
            for frame in frames:
                self.send(frame)
            return
        self.send(b"".join(frames))

    def _reply(self, frame: bytes) -> None:
        self.out_pending += len(frame)
        self.server.reply(self, frame)

    def _busy(self) -> bool:
        """Something is in hand: a request answered later (a waiting CLAIM too), an answer
        queued or not read yet, or requests decoded-to-be that we stopped reading."""
        t = self.transport
        return bool(self.later or self.out_pending or self.stalled or self.waiting_input
                    or (t is not None and t.get_write_buffer_size()))

    def check_idle(self, now: float, limit: float) -> None:
        """Close a connection silent for ``limit`` s with nothing in hand, or one that left a
        frame half-sent that long (whatever else it has in hand)."""
        t = self.transport
        if t is None or self.closing:
            return
        if self.partial_since is not None and now - self.partial_since >= limit:
            self._close_idle()
        elif self._busy():
            self.last_active = now
        elif now - self.last_active >= limit:
            self._close_idle()

    def _close_idle(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- dispatch ----------------------------------------------------------------

    def _dispatch(self, frame: RawFrame) -> None:
        """SUBMIT, CLAIM and RESULT of an authenticated client are decoded and validated in one
        pass (typed.py); any other request, and any such header that pass does not take (an
        error among them), by parsing the header (frames.parse_header) and requests.py."""
        t = frame.type
        fast: Any = None
        if self.identity is not None and not self.peer:
            if t is MsgType.SUBMIT:
                fast = typed.submit(frame.head, frame.blob, self.server.engine.s.max_payload)
            elif t is MsgType.CLAIM:
                fast = typed.claim(frame.head, frame.blob)
            elif t is MsgType.RESULT:
                fast = typed.result(frame.head, frame.blob)
        if fast is not None:
            self._cost = typed_estimate(t, len(frame.blob), fast)
            self._guarded(t, fast[0], self._typed[t], fast)
            return
        msg = parse_header(frame)
        if isinstance(msg, Malformed):
            self._nack(None, msg.error)
            return
        self._cost = answer_estimate(msg)
        self._guarded(t, msg.rid, self._checked, msg)

    def _checked(self, msg: Message) -> None:
        """A request whose header is a parsed JSON object: the checks common to all, then its
        handler (which parses its fields with requests.py)."""
        if msg.rid is None:
            rq.parse_rid(msg.header)  # raises BadRequest naming the field
        if self.identity is None and msg.type is not MsgType.HELLO:
            raise Unauthorized("authentication required: send HELLO with a valid api_key first")
        rq.check_blob(msg.type, msg.header, msg.blob)
        self._handlers[msg.type](msg)

    def _guarded(self, t: MsgType, rid: int | None, run: Callable[[Any], None], arg: Any) -> None:
        """``run(arg)``; what it raises is a NACK of ``rid``."""
        try:
            run(arg)
        except WireError as err:
            self._nack(rid, err)
        except Exception:
            log.exception("internal error on %s rid=%s", t.name, rid)
            self._nack(rid, WireError("internal error; the server logged it"))

    def _answer(self, rid: int | None, result: Any, build: Callable[[Any], Body]) -> None:
        """ACK ``rid`` with ``build(result)`` now, or once ``result`` (an awaitable) is done."""
        if hasattr(result, "__await__"):
            fut = asyncio.ensure_future(result)
            self.later.add(fut)
            fut.add_done_callback(functools.partial(self._answer_later, rid, build, self._cost))
            self.reserved += self._cost
            return
        body, blob = build(result)
        self._ack(rid, body, blob)

    def _answer_later(self, rid: int | None, build: Callable[[Any], Body], cost: int,
                      fut: asyncio.Future[Any]) -> None:
        self.later.discard(fut)
        self.reserved -= cost
        self._account()
        if self.stalled:
            self.wake()
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
        rq.parse_hello(h)
        hint = h.get("shard")
        server = self.server
        # (Under TLS a session cannot move: the ClientHello's ALPN asked instead, tls_accept.py.)
        if (self.ops.routed and self.frames == 1 and type(hint) is int and 0 <= hint < server.shards
                and hint != server.index and server.tls is None and self._hand_over(hint, msg)):
            return  # the shard it asked for answers this HELLO
        if not self._authenticate(msg.rid, h.get("api_key")):
            return  # refused, answered after the throttle's delay (session_auth.py)
        b = server.cfg.broker
        self._ack(msg.rid, {"server": f"shardq/{__version__}", "protocol": PROTOCOL_VERSION,
                            "shard": server.index, "shards": server.shards, "max_frame": MAX_FRAME,
                            "max_payload": server.engine.s.max_payload, "lease_ms": b.lease_timeout_ms,
                            "heartbeat_ms": b.heartbeat_interval_ms, "features": list(FEATURES)})

    def _hand_over(self, shard: int, hello: Message) -> bool:
        """Pass this connection, with its first frames, to ``shard`` (a shard-aware client)."""
        t = self.transport
        sock = t.get_extra_info("socket") if t is not None else None
        if t is None or sock is None:
            return False
        carried = encode(MsgType.HELLO, hello.header, hello.blob) + self.decoder.buffered_bytes()
        if not self.server.hand_over(sock.fileno(), shard, carried):
            return False
        if self.slot:  # the connection keeps the slot it was admitted with, now at ``shard``
            self.slot = False
            self.server.slot_moved(shard)
        self.decoder.take_rest()
        self.closing = True
        t.abort()  # our descriptor only: the connection lives on in the other shard
        return True

    def on_ping(self, msg: Message) -> None:
        self._ack(msg.rid, {})

    def on_submit(self, msg: Message) -> None:
        specs = rq.parse_submit(msg.header, msg.blob, self.server.engine.s.max_payload)
        who = self._who(msg)
        if self.peer:
            remote = msg.header.get("_remote_status") or {}
            ids = self.ops.store_part(specs, {bytes.fromhex(k): v for k, v in remote.items()},
                                      check_depth=not msg.header.get("_skip_depth", False), who=who)
            self._ack(msg.rid, answers.ids(ids)[0])
            return
        self._submit((msg.rid, specs), who)

    def on_claim(self, msg: Message) -> None:
        worker_id, max_tasks, wait_ms, types = rq.parse_claim(msg.header)
        self._claim((msg.rid, worker_id, max_tasks, wait_ms, types), self._who(msg),
                    parse_claim_options(msg.header))

    def on_result(self, msg: Message) -> None:
        worker_id, items = rq.parse_result(msg.header, msg.blob)
        self._result((msg.rid, worker_id, items), self._who(msg))

    # The operations of these three, for either path (``_dispatch``); without ``who``, the
    # connection's own identity (a client's: the fast path is not taken before its HELLO).

    def _submit(self, args: tuple[int | None, list[TaskSpec]], who: Identity | None = None) -> None:
        who = self.identity if who is None else who
        assert who is not None
        self._answer(args[0], self.ops.submit(who, args[1]), answers.ids)

    def _claim(self, args: tuple[int | None, str, int, int, list[str] | None],
               who: Identity | None = None, dependency_results: bool = False) -> None:
        rid, worker_id, max_tasks, wait_ms, types = args
        who = self.identity if who is None else who
        assert who is not None
        self._answer(rid, self.ops.claim(who, self, worker_id, max_tasks, wait_ms,
                                         frozenset(types) if types is not None else None,
                                         dependency_results), answers.claimed)

    def _result(self, args: tuple[int | None, str, list[ResultItem]], who: Identity | None = None) -> None:
        rid, worker_id, items = args
        who = self.identity if who is None else who
        assert who is not None
        self._answer(rid, self.ops.result(who, worker_id, items), answers.results)


__all__ = ["Session", "OUT_HIGH_WATER"]
