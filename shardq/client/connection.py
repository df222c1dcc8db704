"""A blocking protocol connection: frames out, answers matched by rid.

The building block under the blocking client, the tests and the benchmark.
Plain sockets only, so it also works under gevent monkey-patching.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any
from urllib.parse import urlparse

from shardq.errors import ShardqError, error_from_wire
from shardq.protocol.frames import RESPONSE_TYPES, FrameDecoder, Malformed, Message, MsgType, encode


class ConnectionClosed(ShardqError):
    """The server closed the connection (or it broke) before answering."""


def parse_url(url: str) -> tuple[str, int]:
    """``shardq://host:port`` (or ``host:port``) -> (host, port)."""
    if "://" not in url:
        url = "shardq://" + url
    u = urlparse(url)
    if u.scheme != "shardq" or not u.hostname:
        raise ValueError(f"{url!r} is not a shardq URL (shardq://host:port)")
    return u.hostname, u.port or 7070


class Connection:
    def __init__(self, host: str, port: int, timeout: float | None = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = FrameDecoder(accept=RESPONSE_TYPES)
        self._rids = itertools.count(1)
        self._early: dict[int | None, Message] = {}

    @classmethod
    def from_url(cls, url: str, timeout: float | None = 30.0) -> Connection:
        return cls(*parse_url(url), timeout=timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_rid(self) -> int:
        return next(self._rids)

    def send(self, msg_type: int, header: dict[str, Any], blob: bytes = b"") -> int:
        """Send one request; returns its rid (set in ``header`` unless given)."""
        if "rid" not in header:
            header = {"rid": self.next_rid(), **header}
        self.sock.sendall(encode(msg_type, header, blob))
        return header["rid"]

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> Message:
        """The next answer in arrival order."""
        while True:
            msg = self.decoder.next()
            if msg is not None:
                if isinstance(msg, Malformed):
                    raise ConnectionClosed(f"server sent a malformed frame: {msg.error}")
                return msg
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionClosed("connection closed by the server")
            self.decoder.feed(data)

    def wait_for(self, rid: int) -> Message:
        """The answer to ``rid``, keeping answers to other rids for later."""
        if rid in self._early:
            return self._early.pop(rid)
        while True:
            msg = self.receive()
            if msg.rid == rid or (msg.rid is None and msg.header.get("rid") is None):
                return msg
            self._early[msg.rid] = msg

    def call(self, msg_type: int, header: dict[str, Any] | None = None, blob: bytes = b"") -> Message:
        """Send and wait; raises the matching WireError on a NACK."""
        msg = self.wait_for(self.send(msg_type, dict(header or {}), blob))
        if msg.type == MsgType.NACK:
            raise error_from_wire(msg.header.get("error") or {})
        return msg


__all__ = ["Connection", "ConnectionClosed", "parse_url"]
