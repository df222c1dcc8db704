"""The gateway's side toward the shards: the bundled ``AsyncClient`` (one per API key), and
whether every shard serves (for grpc.health.v1).

Rules:
1. The gateway is a client of the broker's own protocol port over loopback, like any other: each
   caller's API key is forwarded in its own HELLO, so the shards authenticate it against the same
   key store and apply the same permissions and type scopes (server/operations.py) as for a TCP
   client; the gateway decides nothing about what a key may do. Keys are not kept: a client is
   found by the key's SHA-256, at most ``MAX_CLIENTS`` of them, the least recently used closed.
2. Each client spreads as ``AsyncClient`` does (a connection per shard, by-id requests straight to
   the owner: shardq/client/spread.py), so a gRPC request costs no hop between shards that a TCP
   client's would not.
3. Under TLS it connects with TLS to its own listener, over loopback: it offers each shard's ALPN
   name as any client does, verifies nothing (the port is the supervisor's, on this host), and
   under mutual TLS presents the server's certificate as its client certificate.
4. Health: every ``HEALTH_EVERY_S`` each shard's mesh socket (the run dir) is asked PING; SERVING
   when all answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import OrderedDict

from shardq.client.aio import AsyncClient, _Lane
from shardq.config import ApiConfig
from shardq.errors import WireError
from shardq.protocol.frames import MsgType
from shardq.protocol.tls_hello import client_alpn
from shardq.server.mesh import mesh_path, open_link

MAX_CLIENTS = 1024
CLIENT_TIMEOUT_S = 30.0
HEALTH_EVERY_S = 1.0
PING_TIMEOUT_S = 2.0


def loopback(host: str) -> str:
    """Where the gateway reaches a listener bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def upstream_context(api: ApiConfig, shard: int | None) -> ssl.SSLContext:
    """Rule 3."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if api.tls_ca_file is not None:
        assert api.tls_cert_file is not None and api.tls_key_file is not None
        ctx.load_cert_chain(api.tls_cert_file, api.tls_key_file)
    ctx.set_alpn_protocols(client_alpn(shard))
    return ctx


class ShardClient(AsyncClient):
    """An AsyncClient whose lanes to each shard use ``upstream_context`` under TLS."""

    def __init__(self, url: str, api: ApiConfig, api_key: str | None) -> None:
        self.api = api
        ctx = upstream_context(api, None) if api.tls_enabled else None
        super().__init__(url, timeout=CLIENT_TIMEOUT_S, api_key=api_key, name="shardq-grpc-gateway",
                         ssl_context=ctx)

    def _new_lane(self, shard: int, ssl_context: ssl.SSLContext | None) -> _Lane:
        return _Lane(shard, upstream_context(self.api, shard) if self.api.tls_enabled else None)


class Upstream:
    """The clients of the gateway, by API key (rule 1)."""

    def __init__(self, api: ApiConfig, host: str, port: int) -> None:
        self.api = api
        scheme = "shardqs" if api.tls_enabled else "shardq"
        where = loopback(host)
        self.url = f"{scheme}://{'[' + where + ']' if ':' in where else where}:{port}"
        self.clients: OrderedDict[str, AsyncClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()

    def client(self, api_key: str | None) -> AsyncClient:
        slot = _slot(api_key)
        client = self.clients.get(slot)
        if client is not None:
            self.clients.move_to_end(slot)
            return client
        client = self.clients[slot] = ShardClient(self.url, self.api, api_key)
        while len(self.clients) > MAX_CLIENTS:
            _, old = self.clients.popitem(last=False)
            self._close_later(old)
        return client

    def forget(self, api_key: str | None) -> None:
        """Drop the client of a key the shards refused (it may be revoked: no connection stays)."""
        client = self.clients.pop(_slot(api_key), None)
        if client is not None:
            self._close_later(client)

    def _close_later(self, client: AsyncClient) -> None:
        task = asyncio.get_running_loop().create_task(client.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        clients = list(self.clients.values())
        self.clients.clear()
        await asyncio.gather(*(c.close() for c in clients), *self._closing, return_exceptions=True)


def _slot(api_key: str | None) -> str:
    return "" if api_key is None else hashlib.sha256(api_key.encode()).hexdigest()


async def shard_serves(run_dir: str, shard: int) -> bool:
    """Does ``shard`` answer a PING on its mesh socket now? (rule 4)"""
    try:
        link = await open_link(mesh_path(run_dir, shard), f"shard-{shard}")
    except WireError:
        return False
    try:
        async with asyncio.timeout(PING_TIMEOUT_S):
            await link.request(MsgType.PING, {})
        return True
    except (WireError, TimeoutError):
        return False
    finally:
        link.close()


async def all_serve(run_dir: str, shards: int) -> bool:
    return all(await asyncio.gather(*(shard_serves(run_dir, i) for i in range(shards))))


__all__ = ["HEALTH_EVERY_S", "ShardClient", "Upstream", "all_serve", "loopback", "upstream_context"]
