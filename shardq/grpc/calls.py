"""What every gRPC handler of the gateway does around its own work: who calls (the bearer key,
and the channel rule), the deadline, and errors as gRPC statuses. ``unary`` and ``streaming``
wrap a handler that takes (request, client[, context]) and returns (or yields) its answer.

Rules:
1. The key is forwarded, not judged (upstream.py rule 1). Here only what the shards cannot see is
   checked, exactly as the TCP port does it: with auth on, a call must carry ``authorization:
   Bearer <key>``, and a key is not accepted over plaintext from a non-loopback peer unless
   ``auth.allow_insecure`` (docs/security.md).
2. A call's deadline bounds its work (``asyncio.timeout``): DEADLINE_EXCEEDED when it runs out.
3. Every shardq error becomes its status (status.py); a broken connection to the shards (or a
   TLS failure on it) is UNAVAILABLE (the client behind it reconnects on the next call); Unauthorized drops the key's
   client.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shardq.client.connection import ConnectionClosed
from shardq.config import AuthConfig
from shardq.errors import TLSError, Unauthorized, WireError
from shardq.grpc.status import abort, status_of, status_of_error
from shardq.grpc.upstream import Upstream

log = logging.getLogger("shardq.grpc")

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
INSECURE = ("API keys are not accepted over plaintext from a non-loopback address: connect with TLS, "
            "or set auth.allow_insecure on the server (docs/security.md)")


class Gate:
    """Who may call, through which client (rule 1); shared by every servicer."""

    def __init__(self, upstream: Upstream, auth: AuthConfig, tls: bool) -> None:
        self.upstream = upstream
        self.auth = auth
        self.tls = tls
        self.draining = asyncio.Event()  # SIGTERM: streams end (UNAVAILABLE: call again elsewhere)

    async def until_draining(self, work: asyncio.Future[T]) -> T | None:
        """``work``'s result, or None when the drain starts first (``work`` is left running)."""
        drain = asyncio.ensure_future(self.draining.wait())
        try:
            await asyncio.wait((work, drain), return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
        return work.result() if work.done() else None

    async def key_of(self, context: grpc.aio.ServicerContext) -> str | None:
        if not self.auth.enabled:
            return None
        value = dict(context.invocation_metadata() or ()).get("authorization")
        if value is None:
            await abort(context, status_of("Unauthorized", "authorization metadata is missing: send "
                                           "'authorization: Bearer <api key>'"))
        scheme, _, key = str(value).strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            await abort(context, status_of("Unauthorized", "authorization metadata must be "
                                           "'Bearer <api key>'"))
        if not (self.tls or self.auth.allow_insecure or _loopback_peer(context.peer())):
            await abort(context, status_of("Unauthorized", INSECURE))
        return key.strip()


def _loopback_peer(peer: str) -> bool:
    """grpc's peer string: ``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``, ``unix:/path``."""
    kind, _, rest = peer.partition(":")
    if kind == "unix":
        return True
    host = rest.rpartition(":")[0].strip("[]")
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


async def _failed(gate: Gate, key: str | None, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Rule 3: end the call with the status of ``exc``."""
    if isinstance(exc, WireError):
        if isinstance(exc, Unauthorized):
            gate.upstream.forget(key)
            # The shards saw the gateway's address: say whose call it was.
            log.warning("gRPC call from %s refused: %s", context.peer(), exc.message)
        await abort(context, status_of_error(exc))
    if isinstance(exc, TimeoutError):
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed")
    if isinstance(exc, ConnectionClosed | OSError | TLSError):
        await abort(context, status_of("Unavailable", f"the broker's shards are unavailable: {exc}"))
    raise exc


# What a handler's call to the shards may raise, each ended with its status by ``_failed``.
_FAILURES = (WireError, TimeoutError, ConnectionClosed, OSError, TLSError)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    left = context.time_remaining()
    return None if left is None else max(0.0, left)


Handler = Callable[[Any, Req, Any, grpc.aio.ServicerContext], Awaitable[Resp]]


def unary(handler: Handler[Req, Resp]) -> Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]:
    """A unary-response RPC: ``async def Name(self, request, client, context) -> response``."""

    @functools.wraps(handler)
    async def rpc(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        gate: Gate = self.gate
        key = await gate.key_of(context)
        client = gate.upstream.client(key)
        try:
            async with asyncio.timeout(_deadline(context)):
                return await handler(self, request, client, context)
        except _FAILURES as exc:
            await _failed(gate, key, context, exc)
            raise  # not reached: _failed aborts

    return rpc


StreamHandler = Callable[[Any, Req, Any, grpc.aio.ServicerContext], AsyncIterator[Resp]]


def streaming(handler: StreamHandler[Req, Resp]) -> Callable[[Any, Req, grpc.aio.ServicerContext],
                                                              AsyncIterator[Resp]]:
    """A server-streaming RPC: ``async def Name(self, request, client, context)`` yielding."""

    @functools.wraps(handler)
    async def rpc(self: Any, request: Req, context: grpc.aio.ServicerContext) -> AsyncIterator[Resp]:
        gate: Gate = self.gate
        key = await gate.key_of(context)
        client = gate.upstream.client(key)
        try:
            # aclosing: a cancelled call runs the handler's cleanup now, not when it is collected
            async with asyncio.timeout(_deadline(context)), contextlib.aclosing(
                    handler(self, request, client, context)) as items:
                async for item in items:
                    yield item
        except _FAILURES as exc:
            await _failed(gate, key, context, exc)

    return rpc


__all__ = ["Gate", "streaming", "unary"]
