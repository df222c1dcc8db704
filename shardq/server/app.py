"""A shard process: open its RocksDB, recover, serve the connections handed to it, drain.

`shardq serve` itself is the supervisor (supervisor.py); this is what it runs
once per shard. Exit codes, named so the supervisor and scripts can tell them
apart: EXIT_OK 0, EXIT_CONFIG 2 (bad configuration or an unusable data dir),
EXIT_BIND 3 (a port or socket could not be bound), EXIT_FORCED 4 (a second
signal cut the drain short).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from shardq.config import Config

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

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


async def _serve_shard(cfg: Config, index: int, shards: int, run_dir: str,
                       ready: Connection | None) -> int:
    from shardq.server.handoff import HandoffReceiver
    from shardq.server.mesh import handoff_path, mesh_path
    from shardq.server.session import Session
    from shardq.server.shard import ShardServer

    loop = asyncio.get_running_loop()
    shard = ShardServer(cfg, cfg.persistence.data_dir, shards, index, run_dir)
    summary = shard.recover()
    shard.start(loop)
    path = mesh_path(run_dir, index)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    try:
        mesh = await loop.create_unix_server(lambda: Session(shard, peer=True), path)
        shard.handoff = HandoffReceiver(loop, handoff_path(run_dir, index), shard.adopt)
    except OSError as exc:
        log.error("cannot listen on the run dir %s: %s", run_dir, exc)
        shard.close()
        return EXIT_BIND
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
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
    for session in sessions:
        if session.transport is not None:
            session.transport.close()
    await asyncio.sleep(0.05)
    log.info("stopped: commits=%d mutations=%d", shard.commits, shard.committed_mutations)
    return EXIT_OK


def shard_main(cfg: Config, index: int, shards: int, run_dir: str,
               ready: Connection | None = None) -> None:
    """Entry point of shard process ``index`` (spawned by the supervisor)."""
    import uvloop

    from shardq.server.supervisor import die_with_parent
    from shardq.store.rocks import StoreError

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor orders the drain
    setup_logging(cfg, f"shard-{index}")
    try:
        code = uvloop.run(_serve_shard(cfg, index, shards, run_dir, ready))
    except StoreError as exc:
        print(f"shardq serve: shard {index}: {exc}", file=sys.stderr, flush=True)
        code = EXIT_CONFIG
    sys.stdout.flush()
    os._exit(code)


def serve(cfg: Config) -> int:
    """`shardq serve`: the supervisor and its processes (see supervisor.py)."""
    from shardq.server.supervisor import Supervisor

    return Supervisor(cfg).run()
