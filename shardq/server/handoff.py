"""Handing TCP connections to shards: file descriptors over Unix SEQPACKET sockets.

Each shard listens on ``handoff-<i>.sock``. A message there is one accepted
TCP connection (its fd, sent with SCM_RIGHTS) plus the bytes already read from
it, which the shard decodes before anything else (empty from the acceptor; the
first frames when another shard forwards a connection that asked for this shard
in its HELLO). SEQPACKET keeps each handoff one message: a sender killed
mid-way delivers all of it or nothing.

The acceptor announces itself with ``ACCEPTOR_HELLO``; the shard then sends it
its connection count (u32 big endian) whenever that changes, which is how the
acceptor balances and enforces max_connections across shards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable

log = logging.getLogger("shardq.handoff")

ACCEPTOR_HELLO = b"\x00acceptor"
# Bytes a handed-over connection may carry along; more stays with the first shard.
MAX_CARRIED = 64 * 1024
_COUNT = struct.Struct(">I")


def listen_seqpacket(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a socket file left by a killed predecessor
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(path)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def connect_seqpacket(path: str) -> socket.socket:
    """Connect (raises OSError when nobody listens) and make the socket non-blocking."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def send_connection(channel: socket.socket, fd: int, carried: bytes = b"") -> bool:
    """Pass ``fd`` (and the bytes read from it so far) over ``channel``; False if it failed."""
    try:
        socket.send_fds(channel, [carried], [fd])
    except OSError as exc:
        log.warning("handoff failed: %s", exc)
        return False
    return True


class HandoffReceiver:
    """The shard's side: adopts handed-over connections, reports counts to the acceptor."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str,
                 adopt: Callable[[socket.socket, bytes], None]) -> None:
        self.loop = loop
        self.adopt = adopt
        self.listener = listen_seqpacket(path)
        self.path = path
        self.channels: set[socket.socket] = set()
        self.acceptor: socket.socket | None = None
        self.count = 0
        loop.add_reader(self.listener, self._on_accept)

    def _on_accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self.channels.add(conn)
        self.loop.add_reader(conn, self._on_message, conn)

    def _on_message(self, conn: socket.socket) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(conn, MAX_CARRIED + 1024, 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, fds = b"", []
        if not data and not fds:
            self._drop(conn)
            return
        if data == ACCEPTOR_HELLO and not fds:
            self.acceptor = conn
            self._send_count()
            return
        for fd in fds:
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                continue
            sock.setblocking(False)
            self.adopt(sock, data)

    def _drop(self, conn: socket.socket) -> None:
        self.loop.remove_reader(conn)
        self.channels.discard(conn)
        if self.acceptor is conn:
            self.acceptor = None
        conn.close()

    def set_count(self, count: int) -> None:
        if count != self.count:
            self.count = count
            self._send_count()

    def _send_count(self) -> None:
        if self.acceptor is not None:
            try:
                self.acceptor.send(_COUNT.pack(self.count))
            except OSError:
                pass  # the acceptor is gone or busy; its next connect asks again

    def close(self) -> None:
        self.loop.remove_reader(self.listener)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for conn in list(self.channels):
            self._drop(conn)


def read_count(message: bytes) -> int | None:
    return _COUNT.unpack(message)[0] if len(message) == _COUNT.size else None
