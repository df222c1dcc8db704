"""What every shardq process does the same way: exit codes, logging, naming, dying with its parent.

Used by the server's processes (supervisor, acceptor, shards, coordinator) and by the worker
and its pool children, so that a script reading an exit code or ``ps`` sees one convention.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

import setproctitle

from shardq.config import MonitoringConfig
from shardq.logs import JsonFormatter

EXIT_OK = 0
EXIT_FATAL = 1  # the worker could not go on (the broker refused it for good)
EXIT_CONFIG = 2  # bad configuration, flags, or a data dir that cannot be used as asked
EXIT_BIND = 3  # a port or socket could not be bound
EXIT_FORCED = 4  # a second signal cut the drain short


def setup_logging(monitoring: MonitoringConfig, role: str) -> None:
    """Log to stderr, one line per event, tagged with this process's role (``shard-3``)."""
    level = getattr(logging, monitoring.log_level.upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    if monitoring.json_logs:
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def set_title(role: str) -> None:
    """Name this process in ``ps`` and ``top`` (``shardq: shard-1``) instead of the
    ``python3 -c from multiprocessing.spawn ...`` that every spawned child shows otherwise."""
    setproctitle.setproctitle(f"shardq: {role}")


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send this child ``sig`` when its parent dies (even by SIGKILL). A server
    process gets SIGTERM, so no shard outlives the supervisor holding its RocksDB lock (the
    SIGTERM drains it like a normal stop); a worker's pool child, SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a parent killed with SIGKILL leaves its children to be stopped by hand
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


def start_child(role: str, monitoring: MonitoringConfig) -> None:
    """The first lines of every spawned server process: follow the supervisor, leave SIGINT to
    it (it orders the drain), ignore SIGHUP unless the process reloads something on it (the
    supervisor forwards it: supervisor.py rule 5), name the process and set up its logging."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    set_title(role)
    setup_logging(monitoring, role)


def describe_exit(code: int | None) -> str:
    """``exited with code 2`` / ``killed by SIGKILL``, for a child's exit status."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
