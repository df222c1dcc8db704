"""A shard's connections: the ones the acceptor (or another shard) hands it, each holding an
admission slot; passing one on to the shard a client asked for (the HELLO hint, or the TLS
ALPN name: tls_accept.py); and the TLS and keys reloads that decide who may stay connected.

``ShardConnections`` is a mixin of ``ShardServer``: these methods keep the shard's own session
sets and slot counters, so they are the shard's methods kept in a file of their own.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from shardq.server.handoff import (
    LISTENER_HTTP,
    LISTENER_TCP,
    MAX_CARRIED,
    Slots,
    connect_seqpacket,
    send_connection,
)
from shardq.server.mesh import handoff_path
from shardq.server.tls_accept import HandshakeRefused, serve_tls

if TYPE_CHECKING:
    from shardq.server.session import Session

log = logging.getLogger("shardq.shard")


class ShardConnections:
    # -- admission slots: every connection handed to this shard holds one ----------------------

    def slots(self) -> Slots:
        return Slots(self.slots_held, self.slots_released, tuple(self.slots_moved))

    def slot_released(self) -> None:
        """A connection handed to this shard ended here (closed, refused, or never set up)."""
        self.slots_held -= 1
        self.slots_released += 1
        if self.handoff is not None:
            self.handoff.report()

    def slot_moved(self, shard: int) -> None:
        """A connection handed to this shard went on to ``shard``, and its slot with it."""
        self.slots_held -= 1
        self.slots_moved[shard] += 1
        if self.handoff is not None:
            self.handoff.report()

    # -- connections: handed over by the acceptor or by another shard ------------------

    def adopt(self, sock: socket.socket | None, carried: bytes, listener: int = LISTENER_TCP) -> None:
        """A TCP connection handed to this shard, with the bytes already read from it.

        It holds an admission slot from now until its session ends or passes it on
        (``Session.slot``); one that cannot be served gives its slot back at once.
        A connection of the HTTP listener goes to ``http_adopt`` (shardq/http), which gives
        its slot back when it closes."""
        assert self.loop is not None and self.session_factory is not None
        self.slots_held += 1
        if sock is None:
            self.slot_released()
            return
        if listener == LISTENER_HTTP:
            if self.http_adopt is None:
                sock.close()
                self.slot_released()
            else:
                self.http_adopt(sock)
            return
        session = self.session_factory(carried)
        session.slot = True
        self.spawn(self._serve(sock, session))

    async def _serve(self, sock: socket.socket, session: Session) -> None:
        assert self.loop is not None
        try:
            if self.tls is None:
                await self.loop.connect_accepted_socket(lambda: session, sock)
            else:
                await serve_tls(self, sock, session)
        except Exception as exc:
            if isinstance(exc, HandshakeRefused):
                self.tls_refused += 1
                log.info("TLS connection refused: %s", exc)  # a client's mistake, not ours
            else:
                log.warning("cannot serve a handed-over connection: %s", exc)
            sock.close()
            if session.transport is None:  # no connection_made, so no connection_lost either
                session.give_back_slot()

    def reload_tls(self) -> None:
        """SIGHUP: new handshakes use the certificate and key read now; sessions keep theirs."""
        if self.tls is not None:
            self.tls.reload()

    def hand_over(self, fd: int, shard: int, carried: bytes) -> bool:
        """Pass a connection to ``shard`` (a HELLO asked for it); False: keep it here."""
        if self.run_dir is None or len(carried) > MAX_CARRIED:
            return False
        channel = self._handoff_out.get(shard)
        if channel is None:
            try:
                channel = self._handoff_out[shard] = connect_seqpacket(handoff_path(self.run_dir, shard))
            except OSError as exc:
                log.warning("cannot hand a connection to shard %d: %s", shard, exc)
                return False
        if send_connection(channel, fd, carried):
            return True
        self._handoff_out.pop(shard, None)
        channel.close()
        return False

    def reload_keys(self, force: bool = False) -> None:
        """Take the keys file again if it changed (``force``: SIGHUP), then close the connections
        whose key is no longer valid (revoked, rotated, disabled, or expired meanwhile)."""
        self.auth.reload(force)
        for session in list(self.sessions):
            session.check_key()

