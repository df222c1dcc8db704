"""Handing TCP connections to shards: file descriptors over Unix SEQPACKET sockets.

Each shard listens on ``handoff-<i>.sock``. A message there is one accepted
TCP connection (its fd, sent with SCM_RIGHTS): one byte naming the listener it
came in on (``LISTENER_TCP``: the shardq protocol, ``LISTENER_HTTP``: the HTTP
API), then the bytes already read from it, which the shard decodes before
anything else (empty from the acceptor; the first frames when another shard
forwards a connection that asked for this shard in its HELLO). SEQPACKET keeps
each handoff one message: a sender killed mid-way delivers all of it or nothing.

The acceptor announces itself with ``ACCEPTOR_HELLO``; the shard answers with a
``Slots`` report, and sends another whenever a connection it was given ends
(closed, refused, never set up) or leaves for another shard (a HELLO hint), at
most one per loop turn. The acceptor admits connections (acceptor.py): it counts
a connection the moment it hands it over, and these reports are how it learns a
slot came free or moved, so its count never lags behind a burst of accepts. The
report's totals are cumulative: a report lost to a full buffer is made good by the
next one, and the first one after the acceptor connects (``held``) is its baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("shardq.handoff")

ACCEPTOR_HELLO = b"\x00acceptor"
# Bytes a handed-over connection may carry along; more stays with the first shard.
MAX_CARRIED = 64 * 1024
# The listener a handed-over connection came in on: the first byte of its message.
LISTENER_TCP = 0
LISTENER_HTTP = 1
_U64 = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class Slots:
    """A shard's account of the connections it was given, for the acceptor.

    ``held``: connections it holds now (given to it and not yet gone or passed on).
    ``released``: connections that ended here, in all (since this shard started).
    ``moved[k]``: connections it passed on to shard k, in all; the slot goes with them."""

    held: int
    released: int
    moved: tuple[int, ...]

    def encode(self) -> bytes:
        return b"".join(_U64.pack(n) for n in (self.held, self.released, *self.moved))

    @classmethod
    def decode(cls, message: bytes, shards: int) -> Slots | None:
        """The report in ``message``, or None when it is not one for ``shards`` shards."""
        if len(message) != _U64.size * (2 + shards):
            return None
        held, released, *moved = struct.unpack(f">{2 + shards}Q", message)
        return cls(held, released, tuple(moved))


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


def send_connection(channel: socket.socket, fd: int, carried: bytes = b"",
                    listener: int = LISTENER_TCP) -> bool:
    """Pass ``fd`` (and the bytes read from it so far) over ``channel``; False if it failed."""
    try:
        socket.send_fds(channel, [bytes((listener,)) + carried], [fd])
    except OSError as exc:
        log.warning("handoff failed: %s", exc)
        return False
    return True


class HandoffReceiver:
    """The shard's side: adopts handed-over connections, reports its slots to the acceptor.

    ``adopt(sock, carried, listener)`` takes each connection (sock None: its descriptor was unusable, but
    its slot must still come back); ``slots()`` is the shard's account now."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str,
                 adopt: Callable[[socket.socket | None, bytes, int], None],
                 slots: Callable[[], Slots]) -> None:
        self.loop = loop
        self.adopt = adopt
        self.slots = slots
        self.listener = listen_seqpacket(path)
        self.path = path
        self.channels: set[socket.socket] = set()
        self.acceptor: socket.socket | None = None
        self._report_due = False
        self._waiting_writable = False
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
            self._stop_waiting()
            self.acceptor = conn
            self._send_report()
            return
        listener, carried = (data[0], data[1:]) if data else (LISTENER_TCP, b"")
        for fd in fds:
            sock: socket.socket | None
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                sock = None
            if sock is not None:
                sock.setblocking(False)
            # Adopted even when unusable: the slot it was given must come back (shard.py).
            self.adopt(sock, carried, listener)

    def _drop(self, conn: socket.socket) -> None:
        self.loop.remove_reader(conn)
        self.channels.discard(conn)
        if self.acceptor is conn:
            self._stop_waiting()
            self.acceptor = None
        conn.close()

    def report(self) -> None:
        """Tell the acceptor this shard's slots, once this loop turn is over."""
        if not self._report_due and self.acceptor is not None:
            self._report_due = True
            self.loop.call_soon(self._send_report)

    def _send_report(self) -> None:
        self._report_due = False
        if self.acceptor is None or self._waiting_writable:
            return  # (the pending retry sends the account as it is then)
        try:
            self.acceptor.send(self.slots().encode())
        except BlockingIOError:
            # The acceptor is busy: the totals are cumulative, so the next send makes good.
            self._waiting_writable = True
            self.loop.add_writer(self.acceptor, self._on_writable)
        except OSError:
            pass  # the acceptor is gone; the next one says hello and gets the whole account

    def _on_writable(self) -> None:
        self._stop_waiting()
        self._send_report()

    def _stop_waiting(self) -> None:
        if self._waiting_writable and self.acceptor is not None:
            self.loop.remove_writer(self.acceptor)
        self._waiting_writable = False

    def close(self) -> None:
        self.loop.remove_reader(self.listener)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for conn in list(self.channels):
            self._drop(conn)

