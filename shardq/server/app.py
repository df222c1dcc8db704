"""`shardq serve`: open the data dir, recover, listen, print READY, drain on a signal.

Exit codes, named so a supervisor or a script can tell them apart: EXIT_OK 0, EXIT_CONFIG 2
(bad configuration or an unusable data dir), EXIT_BIND 3 (port not bound), EXIT_FORCED 4 (a
second signal cut the drain short).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys

import uvloop

from shardq.config import Config
from shardq.server.session import Session
from shardq.server.shard import ShardServer
from shardq.store.partitioned import resolve_shards
from shardq.store.rocks import StoreError

log = logging.getLogger("shardq.serve")

EXIT_OK = 0
EXIT_CONFIG = 2  # bad configuration, flags, or a data dir that cannot be used as asked
EXIT_BIND = 3  # the port could not be bound
EXIT_FORCED = 4  # a second signal cut the drain short


def setup_logging(cfg: Config, role: str = "server") -> None:
    level = getattr(logging, cfg.monitoring.log_level.upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    if cfg.monitoring.json_logs:
        from shardq.logs import JsonFormatter
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


async def _serve(cfg: Config, shards: int) -> int:
    loop = asyncio.get_running_loop()
    shard = ShardServer(cfg, cfg.persistence.data_dir, shards)
    shard.recover()
    shard.start(loop)
    try:
        server = await loop.create_server(
            lambda: Session(shard), host=cfg.broker.host, port=cfg.broker.port,
            reuse_address=True, backlog=1024, family=socket.AF_UNSPEC)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", cfg.broker.host, cfg.broker.port, exc)
        shard.close()
        return EXIT_BIND
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second signal: exiting without draining")
            sys.stdout.flush()
            import os
            os._exit(EXIT_FORCED)
        log.info("%s: draining", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    log.info("serving on %s:%d with %d shard(s), data dir %s, sync=%s", cfg.broker.host, port,
             shards, cfg.persistence.data_dir, cfg.persistence.sync)
    print(f"READY port={port}", flush=True)
    await stop.wait()
    # Drain: stop accepting, stop reading, answer what was read, flush, close the DB.
    server.close()
    shard.closing = True
    for session in list(shard.sessions):
        session.closing = True
        if session.transport is not None:
            session.transport.pause_reading()
    await asyncio.sleep(0)
    shard.close()
    for session in list(shard.sessions):
        if session.transport is not None:
            session.transport.close()
    await asyncio.sleep(0.05)
    log.info("stopped: commits=%d mutations=%d", shard.commits, shard.committed_mutations)
    return EXIT_OK


def serve(cfg: Config) -> int:
    setup_logging(cfg)
    try:
        shards = resolve_shards(cfg.persistence.data_dir, cfg.broker.shards)
    except StoreError as exc:
        print(f"shardq serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return uvloop.run(_serve(cfg, shards))
    except StoreError as exc:
        print(f"shardq serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG

