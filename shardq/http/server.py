"""The HTTP API's connections on one shard: aiohttp serving the sockets the acceptor hands over.

Rules:
1. No listener here: the supervisor binds the HTTP port, the acceptor admits each connection
   against max_connections and hands it to a shard (handoff.py, tagged LISTENER_HTTP), and
   ``adopt`` serves it on this shard's loop with aiohttp's low-level server, a protocol factory
   (``loop.connect_accepted_socket``). TLS, when on, is the ``ServerTLS`` given here (shardq/tls.py:
   the same files as the protocol port, ALPN ``http/1.1``, client certificates required at the
   handshake under mTLS).
2. Each connection holds the acceptor's slot until it closes (``ShardServer.slot_released``),
   and is a ``Caller`` (claims.py): when it closes, its waiting claims are cancelled and what
   they were given goes back at once.
3. The limits are the TCP protocol's: a body of at most one frame (api.py), header lines and
   fields of at most MAX_LINE / MAX_FIELD bytes, MAX_HEADERS headers, and a connection silent for
   broker.connection_timeout_ms between requests (a request left half-sent included) is closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from shardq.dashboard.app import Dashboard
from shardq.errors import BadRequest, WireError
from shardq.http.api import MAX_BODY, Api
from shardq.http.problems import http_refusal, problem
from shardq.server.claims import Caller
from shardq.server.operations import Operations
from shardq.tls import ServerTLS

if TYPE_CHECKING:
    from shardq.server.shard import ShardServer

log = logging.getLogger("shardq.http")

# Header limits: aiohttp's defaults, named (a request line or header line, one header's value,
# and how many headers): a browser's headers fit many times over.
MAX_LINE = 8190
MAX_FIELD = 8190
MAX_HEADERS = 128


class ProblemHandler(RequestHandler):
    """aiohttp's connection handler, with its own error answers (a request line or header over
    the limits, a malformed request) as RFC 9457 problems like every other error of the API."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was sent already; the connection is broken")
        if status >= 500:
            log.error("internal error on an HTTP request from %s", request.remote, exc_info=exc)
            err = WireError("internal error; the server logged it")
        else:
            err = BadRequest((message or HTTPStatus(status).phrase)[:300])
        status, headers, body = problem(err, status)
        resp = web.Response(status=status, body=body, headers=headers)
        resp.force_close()
        return resp


# Paths outside /api/ that the API answers (load balancers' probes); every other path is the dashboard's.
API_ROOT_PATHS = frozenset(("/healthz", "/readyz"))


class HttpServer(web.Server):
    """aiohttp's low-level server, one per shard, counting its connections as the shard's."""

    def __init__(self, shard: ShardServer, ops: Operations, tls: ServerTLS | None = None) -> None:
        self.shard = shard
        self.tls = tls  # its context is read per connection: a SIGHUP reload swaps it
        self.callers: dict[RequestHandler, Caller] = {}
        self._starting: set[RequestHandler] = set()  # made, not yet connected (a TLS handshake)
        self.api = Api(shard, ops, self.callers.get)
        self.dashboard = Dashboard(shard, ops, self.api.committed)
        super().__init__(self._route, request_factory=self._make_request_big,
                         keepalive_timeout=shard.cfg.broker.connection_timeout_ms / 1000,
                         max_line_size=MAX_LINE, max_field_size=MAX_FIELD, max_headers=MAX_HEADERS,
                         access_log=None)

    def _route(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        """The API (``/api/...``, the probes) or the dashboard (every other path)."""
        path = request.rel_url.raw_path
        if path.startswith("/api/") or path in API_ROOT_PATHS:
            return self.api.handle(request)
        return self.dashboard.handle(request)

    def _make_request_big(self, message: Any, payload: Any, protocol: Any, writer: Any,
                          task: asyncio.Task[None]) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, self._loop, client_max_size=MAX_BODY)

    # -- connections ----------------------------------------------------------------------------

    def adopt(self, sock: socket.socket) -> None:
        """A connection of the HTTP listener, handed to this shard with its admission slot."""
        shard = self.shard
        if shard.closing or len(self.callers) + len(shard.sessions) >= shard.cfg.broker.max_connections:
            # A guard only, as in session.py: the acceptor admits against max_connections.
            try:
                sock.send(http_refusal("server is shutting down" if shard.closing else "too many connections"))
            except OSError:
                pass
            sock.close()
            shard.slot_released()
            return
        shard.spawn(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        made: list[RequestHandler] = []
        try:
            await loop.connect_accepted_socket(lambda: self._protocol(made), sock,
                                           ssl=self.tls.context if self.tls is not None else None)
        except Exception as exc:
            log.info("cannot serve an HTTP connection: %s", exc)
            sock.close()
            if not made or made[0] in self._starting:  # no connection_made: no connection_lost either
                self._starting.difference_update(made)
                self.shard.slot_released()

    def __call__(self) -> RequestHandler:
        return ProblemHandler(self, loop=self._loop, **self._kwargs)

    def _protocol(self, made: list[RequestHandler]) -> RequestHandler:
        handler = self()
        made.append(handler)
        self._starting.add(handler)
        return handler

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._starting.discard(handler)
        self.callers[handler] = Caller()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        caller = self.callers.pop(handler, None)
        if caller is not None:
            caller.hang_up()  # its waiting claims end; what they were given goes back
            self.shard.slot_released()

    @property
    def open_connections(self) -> int:
        return len(self.callers)

    async def drain(self) -> None:
        """SIGTERM: refuse new requests (503), let the answers of this turn go out, close."""
        for handler in list(self.callers):
            handler.close()  # closes once its request in progress is answered; idle ones now
        await asyncio.sleep(0.05)
        for handler in list(self.callers):
            handler.force_close()
