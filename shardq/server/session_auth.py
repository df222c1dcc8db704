"""The API-key side of a TCP session (a mixin of ``Session``): who asks, over what channel, and
what happens when its key stops being valid.

Rules:
1. A client session's identity comes from its HELLO (operations.authenticate); a mesh session's
   from each request: every type, or the patterns the asking shard sent in ``_scope`` (routing.py
   rule 5).
2. A refused HELLO that the throttle delays (server/auth.py) is answered after the delay: the
   connection stops reading meanwhile, and the loop is never blocked.
3. ``check_key`` runs on every key reload and once a second: a connection whose key was
   revoked, rotated (past its grace period), disabled, or has expired gets an Unauthorized
   NACK and is closed. Its waiting claims are cancelled as for any closed connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from shardq.errors import Unauthorized
from shardq.server.operations import Identity, peer_identity

if TYPE_CHECKING:
    from shardq.protocol.frames import Message
    from shardq.server.operations import Operations
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.session")


class SessionAuth:
    server: ShardServer
    ops: Operations
    peer: bool
    closing: bool
    identity: Identity | None
    transport: asyncio.Transport | None
    _refusal: asyncio.TimerHandle | None = None

    def _nack(self, rid: int | None, err: Any) -> None:
        raise NotImplementedError

    def _set_reading(self) -> None:
        raise NotImplementedError

    def _who(self, msg: Message) -> Identity:
        if self.peer:
            return peer_identity(msg.header)
        assert self.identity is not None
        return self.identity

    def _channel(self) -> tuple[str, bool]:
        """The peer's address ("unix" for a Unix socket) and whether the connection is TLS."""
        t = self.transport
        if t is None:
            return "unknown", False
        name = t.get_extra_info("peername")
        host = str(name[0]) if isinstance(name, tuple) and name else "unix"
        return host, t.get_extra_info("ssl_object") is not None

    def _authenticate(self, rid: int | None, api_key: object) -> bool:
        """Take the identity of ``api_key``; False when refused (answered now or after a delay)."""
        try:
            self.identity = self.ops.authenticate(api_key, *self._channel())
        except Unauthorized as err:
            delay = getattr(err, "delay_s", 0.0)
            loop = self.server.loop
            if not delay or loop is None:
                raise
            self.identity = None
            self.closing = True  # read nothing more; answer, then close, after the delay
            self._set_reading()
            self._refusal = loop.call_later(delay, self._nack, rid, err)
            return False
        return True

    def check_key(self) -> None:
        """Close this connection if its API key is no longer valid (rule 3)."""
        who = self.identity
        if who is None or who.key_id is None or self.closing:
            return
        why = self.ops.still_valid(who)
        if why:
            log.info("closing a connection of API key %s (%r): the key is %s", who.key_id, who.name, why)
            self._nack(None, Unauthorized(f"this connection's API key is no longer valid ({why})"))


__all__ = ["SessionAuth"]
