"""Connecting a worker to the broker: HELLO and REGISTER_WORKER, reconnecting with backoff, and
adapting to what the broker's HELLO says (its payload limit, lease and heartbeat).

A refusal (bad credentials, a broker that will not take this worker) is ``BrokerRefused``: the
worker cannot go on. Anything else (no route, a timeout, a dropped connection) is retried, the
delay doubling up to 5 s; a reconnect pumps the claim/result cycle (cycle.py) again.

**Lanes.** The home connection (HELLO, REGISTER_WORKER, DEREGISTER, claims and results) is where
the acceptor, or ``--shard k``, puts it. On a multi-shard broker a worker that is not pinned also
keeps a *lane* to every other shard (HELLO with the shard hint; under TLS the ALPN offer), opened
on first use: claims go to the shards in turn and each RESULT to its tasks' owner, so neither
crosses shards (cycle.py). A lane that is down is reopened in the background, its traffic going
to the home connection meanwhile (a hop, never a stall); only the home connection's loss makes
the worker reconnect and wait.

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
import time
from typing import Any

from shardq.client import requests as rq
from shardq.client.aio_connection import AsyncConnection, open_connection
from shardq.client.connection import ConnectionClosed
from shardq.errors import Forbidden, ProtocolError, TLSError, Unauthorized, WireError
from shardq.process import EXIT_FATAL
from shardq.protocol.frames import MAX_PAYLOAD, MsgType
from shardq.tls import client_context

log = logging.getLogger("shardq.worker")


class BrokerRefused(Exception):
    """The worker cannot go on (bad credentials, a broker that refuses it)."""


LANE_RETRY_S = 1.0          # a lane that could not be opened is tried again after this


class Lane:
    """The connection to one other shard: claims of its work, RESULTs of its tasks."""

    __slots__ = ("shard", "ssl_context", "conn", "opening", "retry_at", "dry_until")

    def __init__(self, shard: int, ssl_context: Any) -> None:
        self.shard = shard
        self.ssl_context = ssl_context
        self.conn: AsyncConnection | None = None
        self.opening = False
        self.retry_at = 0.0
        self.dry_until = 0.0        # its shard lent us another's work: ask elsewhere until then


class Connecting:
    """The broker connection: made on demand, remade when it breaks."""

    def _open_lanes(self) -> None:
        """After the home HELLO: a lane per other shard, unless pinned or told not to spread."""
        shards, home = self.server_info.get("shards"), self.server_info.get("shard")
        if (not self.spread or self.shard_hint is not None or type(shards) is not int
                or shards < 2 or type(home) is not int or self.lanes):
            return
        for k in range(shards):
            if k != home:
                ctx = None if self.ssl_context is None else client_context(*self._tls, k)
                self.lanes[k] = Lane(k, ctx)

    def _lane_conn(self, shard: int) -> AsyncConnection:
        """The connection for ``shard``'s traffic: its lane when open, else the home one
        (opening the lane meanwhile). Raises ConnectionClosed when the home one is down."""
        lane = self.lanes.get(shard)
        if lane is not None:
            conn = lane.conn
            if conn is not None and not conn.closed:
                return conn
            if not lane.opening and time.monotonic() >= lane.retry_at:
                lane.opening = True
                self.loop.create_task(self._connect_lane(lane))
        conn = self._conn
        if conn is None or conn.closed:
            raise ConnectionClosed("not connected")
        return conn

    async def _connect_lane(self, lane: Lane) -> None:
        conn: AsyncConnection | None = None
        try:
            conn = await asyncio.wait_for(open_connection(
                self.loop, lambda: AsyncConnection(self.loop, coalesce=True, on_bug=self._internal_error),
                self.host, self.port, lane.ssl_context), self.max_inactivity_s)
            msg = await conn.request(MsgType.HELLO, rq.hello_header("shardq-worker", self.api_key, lane.shard),
                                     timeout=self.max_inactivity_s)
            got = msg.header.get("shard")
            if got != lane.shard:  # that shard is restarting: the home connection serves meanwhile
                raise ConnectionClosed(f"shard {lane.shard} is not serving (got shard {got})")
        except (TimeoutError, OSError, ConnectionClosed, WireError, TLSError) as exc:
            if conn is not None:
                conn.close()
            log.debug("lane to shard %d not open (%s: %s); retrying in %g s", lane.shard,
                      type(exc).__name__, exc, LANE_RETRY_S)
            lane.retry_at = time.monotonic() + LANE_RETRY_S
            return
        finally:
            lane.opening = False
        if self._stop.is_set() and not self.running:
            conn.close()
            return
        lane.conn = conn
        self._schedule_pump()

    def _all_conns(self) -> list[AsyncConnection]:
        conns = [self._conn] + [lane.conn for lane in self.lanes.values()]
        return [c for c in conns if c is not None]

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
                self._open_lanes()
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
