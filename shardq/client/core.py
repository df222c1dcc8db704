"""One client connection without I/O: rids out, answers matched back. Every transport uses it.

The blocking ``Connection``, the asyncio ``AsyncConnection`` (under ``AsyncClient`` and the
worker) differ only in how bytes move; what an answer means is decided here, once.

Rules:

1. ``request`` gives each request the next rid of this connection and files its ``waiter`` (a
   Future, a callback, or the rid itself: whatever the adapter resolves) in ``pending``.
2. ``receive_data`` decodes what arrived and returns ``(waiter, message, error)`` resolutions, in
   order. An answer resolves the request whose rid it carries, with its message, NACK or not
   (the adapter raises the NACK's error). An answer to a rid no longer pending (forgotten after a
   timeout) is dropped.
3. An answer without a rid (``rid: null``: a framing error, "too many connections", a request
   whose rid could not be read) cannot be matched, so it resolves **every** pending request.
4. A NACK whose error closes the connection (``Protocol``, ``Unauthorized``), with a rid or
   without, closes it: requests still pending fail with ``ConnectionClosed`` and ``closed`` is
   set; the adapter then closes its transport. A malformed frame or broken framing closes it too.
5. ``lose(reason)`` (the transport broke or was closed) fails every pending request with
   ``ConnectionClosed``; nothing is pending afterwards.

No sockets, no asyncio: tests/unit/test_client_core.py drives it with bytes.
"""

from __future__ import annotations

import itertools
from typing import Any, Generic, TypeVar

from shardq.errors import WIRE_ERRORS, ProtocolViolation, ShardqError
from shardq.protocol.frames import RESPONSE_TYPES, FrameDecoder, Malformed, Message, MsgType, encode

W = TypeVar("W")

# (waiter, the answer or None, the error or None): exactly one of the last two is set.
Resolution = tuple[W, Message | None, BaseException | None]


class ConnectionClosed(ShardqError):
    """The server closed the connection (or it broke) before answering."""


def closes_connection(msg: Message) -> bool:
    """Whether ``msg`` is a NACK whose error ends the connection."""
    if msg.type != MsgType.NACK:
        return False
    error = msg.header.get("error")
    cls = WIRE_ERRORS.get(error.get("code")) if isinstance(error, dict) else None
    return cls is not None and cls.closes_connection


class ConnectionCore(Generic[W]):
    """Rids, the pending table and the rules above for one connection."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder(accept=RESPONSE_TYPES)
        self.pending: dict[int, W] = {}
        self.closed: str | None = None  # why, once closed
        self._rids = itertools.count(1)

    def request(self, msg_type: int, header: dict[str, Any], blob: bytes, waiter: W) -> tuple[int, bytes]:
        """File ``waiter`` under a fresh rid (set in ``header``); returns the rid and the frame."""
        if self.closed is not None:
            raise ConnectionClosed(self.closed)
        rid = self.next_rid()
        header["rid"] = rid
        data = encode(msg_type, header, blob)
        self.pending[rid] = waiter
        return rid, data

    def next_rid(self) -> int:
        return next(self._rids)

    def track(self, rid: int, waiter: W) -> None:
        """File ``waiter`` under a rid the caller chose (raw tools that set their own rids)."""
        self.pending[rid] = waiter

    def forget(self, rid: int) -> W | None:
        """Stop waiting for ``rid`` (timed out, cancelled): its late answer will be dropped."""
        return self.pending.pop(rid, None)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Resolution[W]]:
        self.decoder.feed(data)
        out: list[Resolution[W]] = []
        while self.closed is None:
            try:
                msg = self.decoder.next()
            except ProtocolViolation as exc:
                out += self.lose(f"the server broke the framing: {exc}")
                break
            if msg is None:
                break
            if isinstance(msg, Malformed):
                out += self.lose(f"the server sent a malformed frame: {msg.error}")
                break
            out += self.receive_message(msg)
        return out

    def receive_message(self, msg: Message) -> list[Resolution[W]]:
        """Rules 2–4 for one decoded answer."""
        if msg.rid is not None:
            waiter = self.pending.pop(msg.rid, None)
            out: list[Resolution[W]] = [] if waiter is None else [(waiter, msg, None)]
        else:
            pending, self.pending = self.pending, {}
            out = [(waiter, msg, None) for waiter in pending.values()]
        if closes_connection(msg):
            error = msg.header.get("error") or {}
            out += self.lose(f"the server closed the connection after {error.get('code')}: "
                             f"{error.get('message')}")
        return out

    def lose(self, reason: str) -> list[Resolution[W]]:
        """The connection is over: every pending request fails with ConnectionClosed."""
        if self.closed is None:
            self.closed = reason
        pending, self.pending = self.pending, {}
        return [(waiter, None, ConnectionClosed(reason)) for waiter in pending.values()]


__all__ = ["ConnectionClosed", "ConnectionCore", "Resolution", "closes_connection"]
