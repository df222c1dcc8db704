"""The acceptor process: owns the client port, hands each connection to a shard.

Rules:
1. It never reads a frame: accept, pick the live shard with the fewest
   connections, pass the fd (handoff.py), close its own copy. A shard-aware
   client that wants a given shard says so in HELLO, and the shard that got it
   passes the connection on (session.py).
2. It is the one place that admits connections, against max_connections for
   the whole server. It counts a connection the moment it hands it to a shard,
   so a burst of accepts never outruns its count; the shards tell it (handoff.py
   ``Slots``) when one ends, and when one moves to another shard on a HELLO hint
   (its slot moves with it: neither refused there nor counted twice). A shard
   that goes away frees the slots of every connection it held. A connection
   beyond the limit gets the contract's NACK and is closed (under TLS it is only
   closed: a TLS client could not read a plaintext NACK, and the acceptor does
   no handshakes; the bundled clients retry it as a broken connection).
3. The listening sockets belong to the supervisor, which binds them once: an
   acceptor restarted after a crash accepts on the same ports at once.
4. Two listeners, one admission: the shardq protocol's port and the HTTP API's
   (shardq/http). A connection goes to a shard tagged with its listener
   (handoff.py); both count against the same max_connections. One refused
   gets its listener's answer: the protocol's NACK, or an HTTP 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import TYPE_CHECKING, Any

import uvloop

from shardq.config import BrokerConfig, MonitoringConfig
from shardq.http.problems import http_refusal
from shardq.process import start_child
from shardq.protocol.frames import encode_nack
from shardq.server.handoff import (
    ACCEPTOR_HELLO,
    LISTENER_HTTP,
    LISTENER_TCP,
    Slots,
    connect_seqpacket,
    send_connection,
)
from shardq.server.mesh import handoff_path

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger("shardq.acceptor")

RECONNECT_S = 0.05
LINK_WAIT_S = 10.0
REPORT_MAX = 64 * 1024  # a shard's Slots report is 8 bytes per shard plus 16


class Acceptor:
    def __init__(self, max_connections: int, listener: socket.socket, run_dir: str, shards: int,
                 http_listener: socket.socket | None = None, tls: bool = False) -> None:
        self.max_connections = max_connections
        self.tls = tls
        self.listener = listener
        self.http_listener = http_listener
        self.run_dir = run_dir
        self.shards = shards
        self.channels: list[socket.socket | None] = [None] * shards
        # Admitted connections each shard holds: +1 at each handoff, then what its reports say.
        self.counts = [0] * shards
        self.reports: list[Slots | None] = [None] * shards  # each linked shard's last report
        self.accepted = 0
        self.refused = 0
        self.stopping = False

    async def run(self, ready: Connection | None) -> None:
        loop = asyncio.get_running_loop()
        linkers = [loop.create_task(self._keep_linked(i)) for i in range(self.shards)]
        # Ready once every shard can take connections (or after LINK_WAIT_S, when one
        # cannot: the others serve meanwhile).
        deadline = loop.time() + LINK_WAIT_S
        while any(ch is None for ch in self.channels) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.listener.setblocking(False)
        loops = [self._accept_loop(self.listener, LISTENER_TCP)]
        if self.http_listener is not None:
            self.http_listener.setblocking(False)
            loops.append(self._accept_loop(self.http_listener, LISTENER_HTTP))
        accepting = loop.create_task(_all(loops))
        loop.add_signal_handler(signal.SIGTERM, self.stop, accepting)
        if ready is not None:
            ready.send("ready")
        try:
            await accepting
        except asyncio.CancelledError:
            pass
        finally:
            for task in linkers:
                task.cancel()
            for ch in self.channels:
                if ch is not None:
                    ch.close()
            log.info("acceptor stopped: accepted=%d refused=%d", self.accepted, self.refused)

    async def _accept_loop(self, listener: socket.socket, kind: int) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:
                log.warning("accept failed: %s", exc)  # e.g. EMFILE: back off briefly
                await asyncio.sleep(0.05)
                continue
            self._place(conn, kind)

    def stop(self, accepting: asyncio.Task[None]) -> None:
        self.stopping = True
        accepting.cancel()

    def _place(self, conn: socket.socket, kind: int = LISTENER_TCP) -> None:
        with conn:
            live = [i for i, ch in enumerate(self.channels) if ch is not None]
            if sum(self.counts) >= self.max_connections:
                self._refuse(conn, "too many connections", kind)
                return
            if not live:
                self._refuse(conn, "no shard is available; retry shortly", kind)
                return
            # Fewest connections first; a shard that just died (its channel not yet seen closed)
            # fails the send, and the next one gets the connection.
            for shard in sorted(live, key=lambda i: self.counts[i]):
                channel = self.channels[shard]
                if channel is not None and send_connection(channel, conn.fileno(), listener=kind):
                    self.counts[shard] += 1  # its slot, until the shard reports it free
                    self.accepted += 1
                    return
            self._refuse(conn, "no shard is available; retry shortly", kind)

    def _refuse(self, conn: socket.socket, message: str, kind: int = LISTENER_TCP) -> None:
        self.refused += 1
        if self.tls:
            return  # rule 2: closed without a word
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(http_refusal(message) if kind == LISTENER_HTTP else encode_nack(None, "Unavailable", message))

    async def _keep_linked(self, shard: int) -> None:
        """Hold a handoff channel to ``shard``; reconnect while it restarts."""
        loop = asyncio.get_running_loop()
        path = handoff_path(self.run_dir, shard)
        while not self.stopping:
            try:
                channel = connect_seqpacket(path)
                channel.send(ACCEPTOR_HELLO)
            except OSError:
                await asyncio.sleep(RECONNECT_S)
                continue
            lost = loop.create_future()

            def on_readable(ch: socket.socket = channel, done: asyncio.Future[None] = lost) -> None:
                try:
                    data = ch.recv(REPORT_MAX)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    data = b""
                if not data:
                    if not done.done():
                        done.set_result(None)
                    return
                report = Slots.decode(data, self.shards)
                if report is not None and not done.done():
                    self._account(shard, report)
                    if self.channels[shard] is None:
                        # The shard answered: it is alive and serving. (A connect can
                        # succeed into the backlog of a shard that is still dying.)
                        self.channels[shard] = ch
                        log.info("linked to shard %d", shard)

            loop.add_reader(channel, on_readable)
            try:
                await lost
            finally:
                loop.remove_reader(channel)
                self.channels[shard] = None
                self.counts[shard] = 0  # its connections died with it
                self.reports[shard] = None
                channel.close()
            if not self.stopping:
                log.warning("shard %d went away; its new connections go to the others", shard)

    def _account(self, shard: int, report: Slots) -> None:
        """Apply a shard's report: slots that came free there, and slots that moved on."""
        last = self.reports[shard]
        self.reports[shard] = report
        if last is None:
            # The first report of this link: what the shard holds is the baseline (a restarted
            # acceptor learns of connections handed out by its predecessor).
            self.counts[shard] = report.held
            return
        self.counts[shard] -= report.released - last.released
        for k, (now, before) in enumerate(zip(report.moved, last.moved)):
            if now != before:
                self.counts[shard] -= now - before
                if self.reports[k] is not None:
                    self.counts[k] += now - before
                # (else shard k is down: the connection died with it, or k's first report,
                # once it is back, counts it)
        if self.counts[shard] < 0:
            log.warning("shard %d reported more closes than it was given connections; "
                        "counting 0", shard)
            self.counts[shard] = 0


async def _all(loops: list[Any]) -> None:
    await asyncio.gather(*loops)


def acceptor_main(broker: BrokerConfig, monitoring: MonitoringConfig, listener: socket.socket,
                  run_dir: str, shards: int, http_listener: socket.socket | None = None,
                  tls: bool = False, ready: Connection | None = None) -> None:
    """Entry point of the acceptor process (spawned by the supervisor)."""
    start_child("acceptor", monitoring)
    uvloop.run(Acceptor(broker.max_connections, listener, run_dir, shards, http_listener, tls).run(ready))
