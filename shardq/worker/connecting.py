"""Connecting a worker to the broker: HELLO and REGISTER_WORKER, reconnecting with backoff, and
adapting to what the broker's HELLO says (its payload limit, lease and heartbeat).

A refusal (bad credentials, a broker that will not take this worker) is ``BrokerRefused``: the
worker cannot go on. Anything else (no route, a timeout, a dropped connection) is retried, the
delay doubling up to 5 s; a reconnect pumps the claim/result cycle (cycle.py) again.

A mixin of ``WorkerRuntime`` (runtime.py), like the other parts: the loop's bookkeeping
(``running``, ``reports``, the connection, the stop event) is one set of state on the runtime,
which the heartbeat thread reads too, so each part uses it as ``self.…`` and ``WorkerRuntime``
stays the one class a caller builds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from shardq.client import requests as rq
from shardq.client.aio_connection import AsyncConnection, open_connection
from shardq.client.connection import ConnectionClosed
from shardq.errors import Forbidden, ProtocolError, TLSError, Unauthorized, WireError
from shardq.process import EXIT_FATAL
from shardq.protocol.frames import MAX_PAYLOAD, MsgType

log = logging.getLogger("shardq.worker")


class BrokerRefused(Exception):
    """The worker cannot go on (bad credentials, a broker that refuses it)."""


class Connecting:
    """The broker connection: made on demand, remade when it breaks."""

    def _adapt_to_server(self) -> None:
        info = self.server_info
        self.max_result = int(info.get("max_payload") or MAX_PAYLOAD)
        limits = [int(info[k]) for k in ("heartbeat_ms",) if info.get(k)]
        if info.get("lease_ms"):
            limits.append(int(info["lease_ms"]) // 2)
        if limits and min(limits) / 1000 < self.heartbeat_interval:
            log.info("heartbeat interval lowered from %.3g s to %.3g s to fit the broker "
                     "(heartbeat %s ms, lease %s ms)", self.heartbeat_interval, min(limits) / 1000,
                     info.get("heartbeat_ms"), info.get("lease_ms"))
            self.heartbeat_interval = max(0.05, min(limits) / 1000)

    async def _get_conn(self) -> AsyncConnection:
        while True:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            if self._connect_task is None or self._connect_task.done():
                self._connect_task = self.loop.create_task(self._connect())
            await asyncio.shield(self._connect_task)

    async def _connect(self) -> None:
        delay, tries = 0.1, 0
        while True:
            tries += 1
            conn: AsyncConnection | None = None
            try:
                conn = await asyncio.wait_for(open_connection(
                    self.loop, lambda: AsyncConnection(self.loop, coalesce=True, on_bug=self._internal_error),
                    self.host, self.port, self.ssl_context), self.max_inactivity_s)
                hello = rq.hello_header("shardq-worker", self.api_key, self.shard_hint)
                try:
                    msg = await conn.request(MsgType.HELLO, hello, timeout=self.max_inactivity_s)
                except ConnectionClosed:
                    raise conn.tls_error() or ConnectionClosed(conn.reason) from None
                self.server_info = dict(msg.header)
                self._check_shard()
                await conn.request(MsgType.REGISTER_WORKER, rq.register_header(self.worker_id, {
                    "hostname": socket.gethostname(), "pid": os.getpid(), "types": self.types,
                    "concurrency": self.concurrency}), timeout=self.max_inactivity_s)
            except (Unauthorized, Forbidden, ProtocolError) as exc:
                if conn is not None:
                    conn.close()
                raise BrokerRefused(f"the broker at {self.url} refused this worker: {exc.code}: {exc}") from None
            except (TimeoutError, OSError, ConnectionClosed, WireError, TLSError) as exc:
                # (A TLS failure is retried too: a certificate being rotated heals by itself;
                # its message says what to fix when it does not.)
                if conn is not None:
                    conn.close()
                if tries == 1 or tries % 10 == 0:
                    log.warning("cannot reach the broker at %s (%s: %s); retrying", self.url,
                                type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if tries > 1 or self._conn is not None:
                log.info("connected to the broker at %s", self.url)
            self._conn = conn
            self._progress.set()
            self._schedule_pump()
            return

    def _check_shard(self) -> None:
        """The broker ignores a shard hint it cannot honour (out of range, or that shard is
        restarting): say so, since claims will then cross shards."""
        got, shards = self.server_info.get("shard"), self.server_info.get("shards")
        if self.shard_hint is None or got == self.shard_hint:
            return
        if isinstance(shards, int) and self.shard_hint >= shards:
            log.warning("--shard %d: the broker has %d shard(s) (0..%d); served by shard %s instead",
                        self.shard_hint, shards, shards - 1, got)
        else:
            log.warning("--shard %d: that shard is not serving (restarting?); served by shard %s "
                        "for this connection", self.shard_hint, got)

    async def _request(self, msg_type: MsgType, header: dict[str, Any], blob: bytes = b"",
                       timeout: float | None = None) -> Any:
        conn = await self._get_conn()
        return await conn.request(msg_type, header, blob,
                                  self.max_inactivity_s if timeout is None else timeout)


    def _reconnect(self) -> None:
        if self._connect_task is None or self._connect_task.done():
            self._connect_task = self.loop.create_task(self._connect())
            self._connect_task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[None]) -> None:
        """A reconnect started by the pump ended (on success, _connect pumps itself)."""
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, BrokerRefused):
            log.error("%s", exc)
            self.exit_code = EXIT_FATAL
            self.request_stop(str(exc))
        elif exc is not None:
            self._internal_error(exc)
