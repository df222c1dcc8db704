"""A shard process: open its RocksDB, recover, serve the connections handed to it, drain.

`shardq serve` itself is the supervisor (supervisor.py); this is what it runs once per shard.
It wires the parts together: the shard service (shard.py: engine, store, group commit), the
operations layer (operations.py) and the transports that call it (session.py for the TCP
protocol, over client connections and over the mesh; shardq/http for the HTTP API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import uvloop

from shardq.config import Config
from shardq.errors import ConfigError
from shardq.http.server import HttpServer
from shardq.keys import KeysFileError
from shardq.process import EXIT_BIND, EXIT_CONFIG, EXIT_OK, start_child
from shardq.server.handoff import HandoffReceiver
from shardq.server.mesh import handoff_path, mesh_path
from shardq.server.operations import Operations
from shardq.server.session import Session
from shardq.server.shard import ShardServer
from shardq.store.rocks import StoreError
from shardq.tls import ServerTLS

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger("shardq.shard")


async def _serve_shard(cfg: Config, index: int, shards: int, run_dir: str,
                       ready: Connection | None) -> int:
    loop = asyncio.get_running_loop()
    # Before the store: a bad file costs no recovery. Sessions refuse a client without a
    # certificate themselves, with a NACK it can read (tls.py rule 1, session.py).
    tls = ServerTLS.from_config(cfg.api, mutual_by_session=True)
    shard = ShardServer(cfg, cfg.persistence.data_dir, shards, index, run_dir)
    shard.tls = tls
    if cfg.auth.enabled:
        shard.auth.load()  # KeysFileError: the supervisor checked it at start; changed since
    summary = shard.recover()
    client_ops = Operations(shard)
    peer_ops = Operations(shard, forwarded=True)
    shard.session_factory = lambda carried: Session(shard, client_ops, carried=carried)
    shard.on_others_ready = client_ops.claims.offer_to_waiters
    # The HTTP API speaks TLS from the same files (its own context: ALPN http/1.1, and client
    # certificates checked at the handshake, as browsers and curl expect).
    http_tls = ServerTLS.from_config(cfg.api, alpn="http/1.1")
    http = HttpServer(shard, client_ops, http_tls)
    shard.http_adopt = http.adopt
    shard.start(loop)
    path = mesh_path(run_dir, index)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    try:
        mesh = await loop.create_unix_server(lambda: Session(shard, peer_ops, peer=True), path)
        shard.handoff = HandoffReceiver(loop, handoff_path(run_dir, index), shard.adopt, shard.slots)
    except OSError as exc:
        log.error("cannot listen on the run dir %s: %s", run_dir, exc)
        shard.close()
        return EXIT_BIND
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(shard, http_tls))
    log.info("shard %d of %d serving (pid %d), recovered in %.3f s", index, shards, os.getpid(),
             summary["seconds"])
    if ready is not None:
        ready.send("ready")
    await stop.wait()
    # Drain: stop taking connections, stop reading, answer what was read, flush, close the DB.
    log.info("SIGTERM: draining")
    if shard.handoff is not None:
        shard.handoff.close()
        shard.handoff = None
    mesh.close()
    shard.closing = True
    sessions = list(shard.sessions) + list(shard.peer_sessions)
    for session in sessions:
        session.closing = True
        if session.transport is not None:
            session.transport.pause_reading()
    await asyncio.sleep(0)
    shard.close()
    await http.drain()
    for session in sessions:
        if session.transport is not None:
            session.transport.close()
    await asyncio.sleep(0.05)
    log.info("stopped: commits=%d mutations=%d", shard.commits, shard.committed_mutations)
    return EXIT_OK


def _reload(shard: ShardServer, http_tls: ServerTLS | None) -> None:
    """SIGHUP (forwarded by the supervisor): reload what this shard reads from files — the
    certificates of both listeners and the keys file."""
    shard.reload_tls()
    if http_tls is not None:
        http_tls.reload()
    shard.reload_keys(True)


def shard_main(cfg: Config, index: int, shards: int, run_dir: str,
               ready: Connection | None = None) -> None:
    """Entry point of shard process ``index`` (spawned by the supervisor)."""
    start_child(f"shard-{index}", cfg.monitoring)
    try:
        code = uvloop.run(_serve_shard(cfg, index, shards, run_dir, ready))
    except (StoreError, KeysFileError) as exc:
        print(f"shardq serve: shard {index}: {exc}", file=sys.stderr, flush=True)
        code = EXIT_CONFIG
    except ConfigError as exc:  # the TLS files: the supervisor checked them, they changed since
        print(f"shardq serve: shard {index}: config error: {exc}", file=sys.stderr, flush=True)
        code = EXIT_CONFIG
    sys.stdout.flush()
    os._exit(code)
