"""A TLS connection handed to this shard: read its ClientHello, pass it on or handshake here.

Rules:
1. The acceptor hands over raw TCP connections and never reads from them (acceptor.py). Under
   TLS the shard that got one *peeks* at its ClientHello (MSG_PEEK: nothing is consumed;
   protocol/tls_hello.py reads it) before any handshake, because a TLS session cannot move
   between processes once it has begun.
2. A ClientHello that offers ``shardq-shard-K`` (a shard-aware client) is passed on to shard K
   the way a plaintext HELLO hint is (shard.py ``hand_over``; its admission slot goes with it),
   still untouched, and K handshakes. A shard that cannot take it (out of range, restarting)
   leaves it here, which the HELLO answer's ``shard`` then says.
3. A connection whose first byte is not a TLS handshake record is a plaintext client: it gets
   a plaintext ``Protocol`` NACK that says to use ``shardqs://``, and is closed.
4. One deadline, ``broker.connection_timeout_ms`` from the handoff, covers the ClientHello and
   the handshake: a client that stalls in either is closed then, and costs nothing but its
   descriptor and its admission slot meanwhile (no buffer, no session, no timer of its own
   beyond the wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING

from shardq.protocol.frames import encode_nack
from shardq.protocol.tls_hello import (
    MAX_HELLO_BYTES,
    NEED_MORE,
    NOT_TLS,
    ClientHello,
    read_client_hello,
    wanted_shard,
)

if TYPE_CHECKING:
    from shardq.server.session import Session
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.tls")

PLAINTEXT_REFUSAL = encode_nack(None, "Protocol", "this server speaks TLS only: connect with a "
                                "shardqs:// URL (and the CA that signed its certificate)")
# While a ClientHello is still arriving the socket stays readable (we only peek), so we poll:
# from 1 ms, doubling, at most this long between looks.
PEEK_POLL_MAX_S = 0.05


class HandshakeRefused(Exception):
    """The connection did not become a TLS session here (rule 3 or 4); the reason is logged."""


async def serve_tls(shard: ShardServer, sock: socket.socket, session: Session) -> None:
    """Rules 1-4 for one handed-over connection; returns once it is served here or passed on.
    Raises HandshakeRefused (or OSError) when it ends before it became a session."""
    loop = asyncio.get_running_loop()
    assert shard.tls is not None
    deadline = loop.time() + shard.cfg.broker.connection_timeout_ms / 1000
    hello = await _peek_hello(loop, sock, deadline)
    if hello is NOT_TLS:
        _refuse_plaintext(sock)
        raise HandshakeRefused("a plaintext client on the TLS port (told to use shardqs://)")
    assert isinstance(hello, ClientHello)
    wanted = wanted_shard(hello)
    if (wanted is not None and wanted != shard.index and wanted < shard.shards
            and shard.hand_over(sock.fileno(), wanted, b"")):
        if session.slot:  # the slot it was admitted with goes with it
            session.slot = False
            shard.slot_moved(wanted)
        sock.close()
        return
    remaining = deadline - loop.time()
    if remaining <= 0:
        raise HandshakeRefused("no TLS handshake within the connection timeout")
    try:
        await loop.connect_accepted_socket(lambda: session, sock, ssl=shard.tls.context,
                                           ssl_handshake_timeout=remaining)
    except (TimeoutError, ConnectionAbortedError) as exc:
        raise HandshakeRefused(f"no TLS handshake within the connection timeout ({exc})") from None
    except OSError as exc:  # ssl.SSLError is one: a bad certificate, a protocol mismatch
        raise HandshakeRefused(f"TLS handshake failed: {exc}") from None


async def _peek_hello(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                      deadline: float) -> ClientHello | object:
    """The ClientHello (or NOT_TLS) at the head of ``sock``, without consuming it."""
    poll = 0.001
    while True:
        try:
            data = sock.recv(MAX_HELLO_BYTES, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            data = None
        if data == b"":
            raise HandshakeRefused("closed before its TLS ClientHello")
        now = loop.time()
        if now >= deadline:
            raise HandshakeRefused("no TLS ClientHello within the connection timeout")
        if data is None:
            await _readable(loop, sock, deadline - now)
            continue
        hello = read_client_hello(data)
        if hello is not NEED_MORE:
            return hello
        await asyncio.sleep(min(poll, deadline - now))  # the rest is on its way
        poll = min(poll * 2, PEEK_POLL_MAX_S)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> None:
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        async with asyncio.timeout(timeout):
            await ready
    except TimeoutError:
        raise HandshakeRefused("no TLS ClientHello within the connection timeout") from None
    finally:
        loop.remove_reader(sock.fileno())


def _refuse_plaintext(sock: socket.socket) -> None:
    """Rule 3. What the client sent is read first: closing a socket with unread input sends a
    reset, which could destroy the NACK before the client reads it."""
    with contextlib.suppress(OSError):
        sock.recv(MAX_HELLO_BYTES)
        sock.send(PLAINTEXT_REFUSAL)
        sock.shutdown(socket.SHUT_WR)


__all__ = ["HandshakeRefused", "PLAINTEXT_REFUSAL", "serve_tls"]
