"""A blocking protocol connection: frames out, answers matched by rid (``ConnectionCore``).

The building block under the blocking client, the tests and the benchmark.
Plain sockets only, so it also works under gevent monkey-patching.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlparse

from shardq.client.core import ConnectionClosed, ConnectionCore, Resolution
from shardq.errors import error_from_wire
from shardq.protocol.frames import Malformed, Message, MsgType, encode


def parse_url(url: str) -> tuple[str, int]:
    """``shardq://host:port`` (or ``host:port``) -> (host, port)."""
    if "://" not in url:
        url = "shardq://" + url
    u = urlparse(url)
    if u.scheme != "shardq" or not u.hostname:
        raise ValueError(f"{url!r} is not a shardq URL (shardq://host:port)")
    return u.hostname, u.port or 7070


class Connection:
    """One blocking connection. ``send`` + ``wait_for`` (or ``call``) match answers by rid under
    the core's rules; ``receive`` reads the raw answers in arrival order (tests, tools)."""

    def __init__(self, host: str, port: int, timeout: float | None = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.core: ConnectionCore[int] = ConnectionCore()
        self.decoder = self.core.decoder
        self._answers: dict[int, Message | BaseException] = {}

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

    def send(self, msg_type: int, header: dict[str, Any], blob: bytes = b"") -> int:
        """Send one request; returns its rid. A ``rid`` already in ``header`` is sent as it is
        (tests send odd ones), and waited for when it is an int."""
        if "rid" in header:
            rid = header["rid"]
            data = encode(msg_type, header, blob)
            if type(rid) is int:
                self.core.track(rid, rid)
        else:
            rid = self.core.next_rid()
            data = encode(msg_type, {"rid": rid, **header}, blob)
            self.core.track(rid, rid)
        self.sock.sendall(data)
        return rid

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> Message:
        """The next answer in arrival order, as it is (no rid matching)."""
        while True:
            msg = self.decoder.next()
            if msg is not None:
                if isinstance(msg, Malformed):
                    raise ConnectionClosed(f"server sent a malformed frame: {msg.error}")
                if msg.rid is not None:
                    self.core.forget(msg.rid)
                return msg
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionClosed("connection closed by the server")
            self.decoder.feed(data)

    def wait_for(self, rid: int) -> Message:
        """The answer to ``rid`` (a rid-less NACK answers every request waiting), keeping
        answers to other rids for later."""
        answers = self._answers
        while rid not in answers:
            if rid not in self.core.pending:
                raise ConnectionClosed(self.core.closed or f"no request with rid {rid} is waiting")
            data = self.sock.recv(1 << 20)
            got = self.core.receive_data(data) if data else self.core.lose("connection closed by the server")
            self._keep(got)
        answer = answers.pop(rid)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _keep(self, resolutions: list[Resolution[int]]) -> None:
        for rid, msg, exc in resolutions:
            self._answers[rid] = exc if msg is None else msg  # type: ignore[assignment]

    def call(self, msg_type: int, header: dict[str, Any] | None = None, blob: bytes = b"") -> Message:
        """Send and wait; raises the matching WireError on a NACK."""
        msg = self.wait_for(self.send(msg_type, dict(header or {}), blob))
        if msg.type == MsgType.NACK:
            raise error_from_wire(msg.header.get("error") or {})
        return msg


__all__ = ["Connection", "ConnectionClosed", "parse_url"]
