"""One asyncio connection: the transport adapter around ``ConnectionCore``.

Under ``AsyncClient`` and the worker's run loop. It moves bytes and resolves what the core
decides (shardq.client.core's rules); it adds only what needs a loop:

1. Every request gets a callback, called exactly once: ``callback(answer, None)`` or
   ``callback(None, error)``, where a NACK arrives as its ``shardq.errors`` class and a broken
   connection as ``ConnectionClosed``. ``request`` wraps that in a Future for coroutines (the
   claim/result cycle of the worker, its hot path, uses bare callbacks: no Task per request).
2. A callback that raises is a bug of its owner: ``on_bug`` gets the exception, the connection
   goes on.
3. Flow control: while the transport's write buffer is over its high-water mark
   (``pause_writing`` .. ``resume_writing``), ``drain`` waits, so a caller that drains before
   each write buffers at most the high-water mark plus one frame.
4. ``coalesce=True`` gathers the frames written in one loop turn into one write (a RESULT and
   the CLAIM after it leave together).
5. ``open_connection`` connects, over TLS when given a context; a failed handshake raises
   ``TLSError``, and so does a connection the server ended with a TLS alert (``tls_error``:
   under TLS 1.3 a refused client certificate is only heard of on the first read).
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from shardq.client.connection import tls_failure
from shardq.client.core import ConnectionClosed, ConnectionCore, Resolution
from shardq.errors import TLSError, error_from_wire
from shardq.protocol.frames import Message, MsgType

Callback = Callable[[Message | None, BaseException | None], None]


class AsyncConnection(asyncio.Protocol):
    """Pipelined requests on one TCP connection, answers matched by rid (module rules)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, coalesce: bool = False,
                 on_bug: Callable[[BaseException], None] | None = None) -> None:
        self.loop = loop
        self.core: ConnectionCore[tuple[Callback, float]] = ConnectionCore()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = loop.create_future()  # done once the transport is gone
        self._coalesce = coalesce
        self._on_bug = on_bug
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._paused = False
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self.where = ""  # host:port, for errors
        self.lost_exc: BaseException | None = None  # why the transport went, when it said

    @property
    def closed(self) -> bool:
        return self.core.closed is not None

    @property
    def reason(self) -> str:
        return self.core.closed or "not connected"

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, hence no isinstance check.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._resolve(self.core.receive_data(data))
        if self.core.closed is not None and self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool:
        self._resolve(self.core.lose("connection closed by the server"))
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_exc = exc
        self._resolve(self.core.lose("connection closed" if exc is None else f"connection lost: {exc}"))
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionClosed(self.reason))
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        while self._drain_waiters:
            waiter = self._drain_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # -- requests -----------------------------------------------------------------------

    def send(self, msg_type: MsgType, header: dict[str, Any], blob: bytes, callback: Callback,
             timeout: float | None = None) -> int:
        """Write one request (``header`` gets its rid); ``callback`` follows once. ``timeout``:
        seconds after which ``overdue`` reports it. Raises ConnectionClosed when closed."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionClosed(self.reason)
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        rid, data = self.core.request(msg_type, header, blob, (callback, deadline))
        if not self._coalesce:
            self.transport.write(data)
        else:
            self._out.append(data)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush)
        return rid

    def request(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
                timeout: float | None = None) -> asyncio.Future[Message]:
        """``send`` for coroutines: the answer as a Future (a NACK as its error). Cancelling
        the Future forgets the request; its late answer is dropped."""
        fut: asyncio.Future[Message] = self.loop.create_future()

        def done(msg: Message | None, exc: BaseException | None) -> None:
            if not fut.done():
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(cast(Message, msg))
        rid = self.send(msg_type, header, blob, done, timeout)
        fut.add_done_callback(lambda f: self.core.forget(rid) if f.cancelled() else None)
        return fut

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        while self._paused and not self.closed:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self.closed:
            raise ConnectionClosed(self.reason)

    def overdue(self, now: float) -> bool:
        """Whether a request has waited past its timeout (``now``: time.monotonic())."""
        return any(now > deadline for _cb, deadline in self.core.pending.values())

    def tls_error(self) -> TLSError | None:
        """Rule 5: a TLSError when the server ended this connection with a TLS alert."""
        exc = self.lost_exc
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
            host, _, port = self.where.rpartition(":")
            return tls_failure(exc, host, int(port or 0))
        return None

    def abort(self, reason: str) -> None:
        self._resolve(self.core.lose(reason))
        if self.transport is not None:
            self.transport.abort()

    def close(self, reason: str = "the client closed the connection") -> None:
        self._resolve(self.core.lose(reason))
        if self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if out and self.transport is not None and not self.closed:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.transport.write(data)

    def _resolve(self, resolutions: list[Resolution[tuple[Callback, float]]]) -> None:
        for (callback, _deadline), msg, exc in resolutions:
            if msg is not None and msg.type == MsgType.NACK:
                msg, exc = None, error_from_wire(msg.header.get("error") or {})
            try:
                callback(msg, exc)
            except Exception as bug:  # noqa: BLE001 -- must not take the connection down with it
                if self._on_bug is None:
                    raise
                self.loop.call_soon(self._on_bug, bug)


async def open_connection(loop: asyncio.AbstractEventLoop, factory: Callable[[], AsyncConnection],
                          host: str, port: int, ssl_context: ssl.SSLContext | None) -> AsyncConnection:
    """Connect (rule 5): over TLS when ``ssl_context`` is given, verifying ``host``."""
    try:
        _, conn = await loop.create_connection(factory, host, port, ssl=ssl_context,
                                               server_hostname=host if ssl_context is not None else None)
    except ssl.SSLError as exc:
        raise tls_failure(exc, host, port) from None
    conn.where = f"{host}:{port}"
    return conn


__all__ = ["AsyncConnection", "Callback", "ConnectionClosed", "open_connection"]
