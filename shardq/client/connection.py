"""A blocking protocol connection: frames out, answers matched by rid (``ConnectionCore``).

The building block under the blocking client, the tests and the benchmark.
Plain sockets only (or the ``ssl`` module's, over them), so it also works under gevent
monkey-patching. Over TLS, a failed handshake, and a TLS alert on the first read (the server
refused our client certificate: TLS 1.3 says so only then), raise ``TLSError``.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any
from urllib.parse import urlparse

from shardq.client.core import ConnectionClosed, ConnectionCore, Resolution
from shardq.errors import TLSError, error_from_wire
from shardq.protocol.frames import Malformed, Message, MsgType, encode
from shardq.tls import client_context, describe_failure

SCHEMES = {"shardq": False, "shardqs": True}  # scheme -> TLS
RECV_BUFFER = 256 * 1024  # bytes read at most per recv (a large answer takes a few)


def parse_target(url: str) -> tuple[str, int, bool]:
    """``shardq://host:port`` (plaintext), ``shardqs://host:port`` (TLS) or ``host:port``
    (plaintext) -> (host, port, tls)."""
    if "://" not in url:
        url = "shardq://" + url
    u = urlparse(url)
    if u.scheme not in SCHEMES or not u.hostname:
        raise ValueError(f"{url!r} is not a shardq URL (shardq://host:port, or shardqs://host:port "
                         f"for TLS)")
    return u.hostname, u.port or 7070, SCHEMES[u.scheme]


def parse_url(url: str) -> tuple[str, int]:
    """``shardq://host:port`` / ``shardqs://host:port`` / ``host:port`` -> (host, port)."""
    host, port, _ = parse_target(url)
    return host, port


def check_tls_options(url: str, tls: bool, **options: Any) -> None:
    """Refuse TLS options given for a plaintext URL: they would do nothing."""
    given = [name for name, value in options.items() if value is not None]
    if given and not tls:
        raise ValueError(f"{', '.join(given)} given, but {url} is not a TLS URL: use shardqs://")


def tls_failure(exc: BaseException, host: str, port: int) -> TLSError:
    return TLSError(describe_failure(exc, f"{host}:{port}"))


class Connection:
    """One blocking connection. ``send`` + ``wait_for`` (or ``call``) match answers by rid under
    the core's rules; ``receive`` reads the raw answers in arrival order (tests, tools)."""

    def __init__(self, host: str, port: int, timeout: float | None = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """``ssl_context``: speak TLS (shardq/tls.py ``client_context``), verifying ``host``."""
        self.host, self.port = host, port
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            try:
                sock = ssl_context.wrap_socket(sock, server_hostname=host)  # the handshake
            except ssl.SSLError as exc:
                sock.close()
                raise tls_failure(exc, host, port) from None
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.tls = ssl_context is not None
        self.core: ConnectionCore[int] = ConnectionCore()
        self.decoder = self.core.decoder
        self._answers: dict[int, Message | BaseException] = {}
        # One receive buffer for the connection's life: ``sock.recv(1 MiB)`` allocated a fresh
        # 1 MiB object per read, which glibc serves with mmap + mremap + munmap (three syscalls
        # and page faults per answer: most of a small request's client-side CPU).
        self._rbuf = memoryview(bytearray(RECV_BUFFER))

    @classmethod
    def from_url(cls, url: str, timeout: float | None = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> Connection:
        """``shardqs://`` without ``ssl_context``: the files named by SHARDQ_TLS_CA (else the
        system CAs), SHARDQ_TLS_CERT and SHARDQ_TLS_KEY, as the CLI reads them (for tools:
        the benchmark, loadtests/)."""
        host, port, tls = parse_target(url)
        if tls and ssl_context is None:
            env = os.environ
            ssl_context = client_context(env.get("SHARDQ_TLS_CA") or None,
                                         env.get("SHARDQ_TLS_CERT") or None,
                                         env.get("SHARDQ_TLS_KEY") or None)
        return cls(host, port, timeout=timeout, ssl_context=ssl_context if tls else None)

    def recv(self) -> memoryview:
        """Bytes from the server (empty once it closed), valid until the next ``recv``; a TLS
        alert raises TLSError."""
        try:
            return self._rbuf[:self.sock.recv_into(self._rbuf)]
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return self._rbuf[:0]  # closed, with or without a TLS close_notify: a broken connection
        except ssl.SSLError as exc:
            raise tls_failure(exc, self.host, self.port) from None

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
            data = self.recv()
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
            data = self.recv()
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


__all__ = ["Connection", "ConnectionClosed", "check_tls_options", "parse_target", "parse_url"]
