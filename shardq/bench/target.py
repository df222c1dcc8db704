"""The server a benchmark runs against: where it is, and what it costs (CPU and RSS).

Either a fresh `shardq serve` in a temporary data dir, stopped with SIGTERM afterwards, or the
running server of ``--server`` (measured only when ``--server-pid`` is given).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

from shardq import __version__
from shardq.bench.options import Options
from shardq.client.connection import Connection
from shardq.protocol.frames import MsgType
from shardq.testing import ServerProcess

SERVER_START_TIMEOUT_S = 60.0


class ServerMeter:
    """CPU and RSS of a server process and all its children; measures nothing without a pid."""

    def __init__(self, pid: int | None) -> None:
        self._proc = psutil.Process(pid) if pid is not None else None
        self.peak_rss: int | None = None

    def _tree(self) -> list[psutil.Process]:
        if self._proc is None:
            return []
        try:
            return [self._proc, *self._proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float | None:
        if self._proc is None:
            return None
        total = 0.0
        for proc in self._tree():
            try:
                times = proc.cpu_times()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            total += times.user + times.system
        return total

    def rss(self) -> int | None:
        if self._proc is None:
            return None
        total = 0
        for proc in self._tree():
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return total

    def sample(self) -> None:
        rss = self.rss()
        if rss is not None and (self.peak_rss is None or rss > self.peak_rss):
            self.peak_rss = rss


@dataclass(slots=True)
class Target:
    url: str
    meter: ServerMeter
    shards: int
    sync: str


def _server_args(opts: Options, tasks: int) -> list[str]:
    return ["--shards", str(opts.shards), "--sync", opts.sync or "interval",
            "--queue-depth-threshold", str(max(100_000, 2 * tasks))]


@contextmanager
def own_server(opts: Options, tasks: int) -> Iterator[ServerProcess]:
    """A fresh server in a temp dir; stopped (SIGTERM) after, its group killed on error."""
    with tempfile.TemporaryDirectory(prefix="shardq-bench-", ignore_cleanup_errors=True) as tmp:
        srv = ServerProcess(os.path.join(tmp, "data"), _server_args(opts, tasks))
        try:
            srv.start(timeout=SERVER_START_TIMEOUT_S)
            yield srv
        except BaseException:
            srv.kill()
            raise
        srv.stop(timeout=max(30.0, opts.duration_limit))


@contextmanager
def target_server(opts: Options, tasks: int) -> Iterator[Target]:
    """The server a throughput scenario runs against: --server, or a fresh one."""
    if opts.server is not None:
        with Connection.from_url(opts.server) as conn:
            hello = conn.call(MsgType.HELLO, {"client": f"shardq-bench/{__version__}",
                                              "protocol": 1}).header
        yield Target(opts.server, ServerMeter(opts.server_pid), int(hello.get("shards", 0)),
                     opts.sync or "unknown")
        return
    with own_server(opts, tasks) as srv:
        yield Target(srv.url, ServerMeter(srv.pid), opts.shards, opts.sync or "interval")
