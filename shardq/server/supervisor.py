"""`shardq serve`: the supervisor. Starts the coordinator, the shards and the acceptor;
restarts whichever dies; drains them all on SIGTERM/SIGINT.

Rules:
1. Children are started with ``spawn``: RocksDB handles and event loops are
   opened in the child, never inherited.
2. The supervisor binds the client port (and the HTTP API's, ``api.rest_port``)
   once and passes the listening sockets to the acceptor, so an acceptor
   restarted after a crash serves the same ports at once (and ``--port 0`` keeps
   the port it printed).
3. A child that dies is restarted after a backoff (0.1 s, doubling while it
   keeps dying young, at most 5 s), with a log line that says how it died. A
   shard that exits EXIT_CONFIG before it ever served (its data dir is locked or
   unusable) stops the whole server with that code instead.
4. Drain order: the acceptor (no new connections), then the shards (each answers
   what it read, flushes, closes its RocksDB), then the coordinator. A second
   signal kills what is left and exits EXIT_FORCED.
5. SIGHUP is forwarded to every child: each reloads what it reads from files
   (the TLS certificate and key: shard.py ``reload_tls``, the coordinator's
   /metrics) without dropping a connection. The TLS files are checked once
   before anything starts: a bad one exits EXIT_CONFIG naming the key and file.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shardq.config import Config
from shardq.errors import ConfigError
from shardq.grpc.process import gateway_main, grpc_missing
from shardq.keys import KeysFileError
from shardq.process import (
    EXIT_BIND,
    EXIT_CONFIG,
    EXIT_FORCED,
    EXIT_OK,
    describe_exit,
    set_title,
    setup_logging,
)
from shardq.server.acceptor import acceptor_main
from shardq.server.auth import load_ring
from shardq.server.coordinator import coordinator_main
from shardq.server.shard_process import shard_main
from shardq.store.partitioned import record_shards, resolve_shards
from shardq.store.rocks import StoreError
from shardq.tls import ServerTLS

log = logging.getLogger("shardq.supervisor")

START_TIMEOUT_S = 120.0  # recovery of a large shard counts toward this
DRAIN_TIMEOUT_S = 60.0
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
STABLE_AFTER_S = 10.0  # a child that lived this long restarts at the minimum backoff


@dataclass
class Child:
    name: str
    target: Callable[..., None]
    args: tuple[Any, ...]
    process: Any = None
    started: float = 0.0
    backoff: float = BACKOFF_MIN_S
    restart_at: float | None = None
    restarts: int = 0
    served: bool = False
    ready_conn: Any = field(default=None, repr=False)


def read_ready(conn: Any, is_alive: Callable[[], bool]) -> tuple[str, Any]:
    """What a starting child's ready pipe says now: ("ready", message), ("dead", None) or
    ("starting", None). The pipe is polled once: polling again after a liveness check would race
    a "ready" sent in between and take a child that just became ready for one that died."""
    if conn.poll():
        try:
            said = conn.recv()
        except (EOFError, OSError):
            return "dead", None  # the child closed its end without a word: it died
        return ("ready", said) if said == "ready" or isinstance(said, dict) else ("dead", None)
    return ("starting", None) if is_alive() else ("dead", None)


class Supervisor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.ctx = multiprocessing.get_context("spawn")
        self.children: list[Child] = []
        self.signals = 0
        self.listener: socket.socket | None = None
        self.http_listener: socket.socket | None = None
        self.run_dir = ""

    def run(self) -> int:
        cfg = self.cfg
        setup_logging(cfg.monitoring, "supervisor")
        try:
            ServerTLS.from_config(cfg.api)  # rule 5: the children build their own from the same files
        except ConfigError as exc:
            print(f"shardq serve: config error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if not self._check_auth():
            return EXIT_CONFIG
        if cfg.api.grpc_enabled and (missing := grpc_missing()):
            print(f"shardq serve: {missing}", file=sys.stderr)
            return EXIT_CONFIG
        data_dir = cfg.persistence.data_dir
        try:
            shards = resolve_shards(data_dir, cfg.broker.shards)
            record_shards(data_dir, shards)
        except (StoreError, OSError) as exc:
            print(f"shardq serve: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            self.listener = socket.create_server(
                (cfg.broker.host, cfg.broker.port), family=_family(cfg.broker.host),
                backlog=1024, reuse_port=False)
        except OSError as exc:
            log.error("cannot listen on %s:%s: %s", cfg.broker.host, cfg.broker.port, exc)
            return EXIT_BIND
        port = self.listener.getsockname()[1]
        try:
            if cfg.api.rest_enabled:
                self.http_listener = socket.create_server(
                    (cfg.api.rest_host, cfg.api.rest_port), family=_family(cfg.api.rest_host),
                    backlog=1024, reuse_port=False)
        except OSError as exc:
            log.error("cannot listen for HTTP on %s:%s: %s", cfg.api.rest_host, cfg.api.rest_port, exc)
            self.listener.close()
            return EXIT_BIND
        set_title(f"supervisor {cfg.broker.host}:{port} {data_dir}")
        # Unix socket paths are limited to ~108 bytes: keep the run dir short.
        clean_stale_run_dirs()
        self.run_dir = tempfile.mkdtemp(prefix="shardq-")
        with open(os.path.join(self.run_dir, "supervisor.pid"), "w") as f:
            f.write(str(os.getpid()))
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        try:
            return self._supervise(shards, port)
        finally:
            self.listener.close()
            if self.http_listener is not None:
                self.http_listener.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _check_auth(self) -> bool:
        """The keys file loads (else the reason, naming the entry, never a secret); the
        deprecated plaintext ``auth.api_keys`` still work, with a warning."""
        auth = self.cfg.auth
        if not auth.enabled:
            return True
        try:
            ring = load_ring(auth)
        except KeysFileError as exc:
            print(f"shardq serve: {exc}", file=sys.stderr, flush=True)
            return False
        if auth.api_keys:
            log.warning("auth.api_keys is deprecated (keys in clear text in the config) and will be "
                        "removed in the next release: move them to a keys file with `shardq keys import "
                        "--config FILE --keys-file KEYS`, then set auth.keys_file (docs/security.md)")
        log.info("auth on: %d API keys%s", len(ring.records),
                 "" if auth.allow_insecure else "; plaintext from non-loopback addresses refused")
        return True

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if self.signals > 1:
            log.warning("second signal: killing the children without draining")
            for child in self.children:
                if child.process is not None and child.process.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.process.pid, signal.SIGKILL)
            sys.stdout.flush()
            os._exit(EXIT_FORCED)

    def _on_hangup(self, signum: int, frame: Any) -> None:
        """Rule 5: pass SIGHUP on to every running child."""
        alive = [c for c in self.children if c.process is not None and c.process.is_alive()]
        log.info("SIGHUP: reloading in %d process(es)", len(alive))
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, signal.SIGHUP)

    def _supervise(self, shards: int, port: int) -> int:
        cfg, run_dir = self.cfg, self.run_dir
        metrics_port = cfg.monitoring.prometheus_port if cfg.monitoring.metrics_enabled else None
        # Each child gets the part of the configuration it uses.
        self.children = [Child("coordinator", coordinator_main,
                               (cfg.broker, cfg.monitoring, cfg.api, run_dir, shards, metrics_port))]
        self.children += [Child(f"shard-{i}", shard_main, (cfg, i, shards, run_dir)) for i in range(shards)]
        self.children.append(Child("acceptor", acceptor_main,
                                   (cfg.broker, cfg.monitoring, self.listener, run_dir, shards,
                                    self.http_listener, cfg.api.tls_enabled)))
        if cfg.api.grpc_enabled:  # the gRPC gateway (shardq/grpc): a client of the port above
            self.children.append(Child("grpc", gateway_main, (cfg, port, run_dir, shards, cfg.api.grpc_port)))
        for child in self.children:
            self._start(child)
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = {c.name for c in self.children}
        bound: dict[str, int] = {}
        while waiting:
            if self.signals:
                return self._drain()
            for child in self.children:
                if child.name not in waiting:
                    continue
                state, said = read_ready(child.ready_conn, child.process.is_alive)
                if state == "ready":
                    if isinstance(said, dict) and said.get("metrics_port") is not None:
                        # A restarted coordinator serves /metrics on the same port.
                        bound["metrics_port"] = said["metrics_port"]
                        child.args = (*child.args[:-1], said["metrics_port"])
                    if isinstance(said, dict) and said.get("grpc_port") is not None:
                        bound["grpc_port"] = said["grpc_port"]  # a restart binds it again
                        child.args = (*child.args[:-1], said["grpc_port"])
                    child.served = True
                    waiting.discard(child.name)
                elif state == "dead":
                    child.process.join(5)
                    code = child.process.exitcode
                    log.error("%s %s before it was ready", child.name, describe_exit(code))
                    self._stop_all()
                    return EXIT_BIND if code == EXIT_BIND else EXIT_CONFIG
            if time.monotonic() > deadline:
                log.error("not ready after %.0f s: %s", START_TIMEOUT_S, ", ".join(sorted(waiting)))
                self._stop_all()
                return EXIT_CONFIG
            time.sleep(0.01)
        log.info("serving on %s:%d with %d shard(s), data dir %s, sync=%s", cfg.broker.host, port,
                 shards, cfg.persistence.data_dir, cfg.persistence.sync)
        if self.http_listener is not None:
            bound["http_port"] = self.http_listener.getsockname()[1]
            log.info("HTTP API on http://%s:%d/api/v1 (reference: /api/docs)", cfg.api.rest_host,
                     bound["http_port"])
        extra = "".join(f" {k}={v}" for k, v in bound.items())
        print(f"READY port={port}{extra}", flush=True)
        while not self.signals:
            self._watch()
        return self._drain()

    def _start(self, child: Child) -> None:
        recv, send = self.ctx.Pipe(duplex=False)
        if child.ready_conn is not None:
            child.ready_conn.close()  # the last run's pipe: one fd per restart otherwise
        child.ready_conn = recv
        child.process = self.ctx.Process(target=child.target, args=(*child.args, send),
                                         name=f"shardq-{child.name}", daemon=False)
        child.process.start()
        send.close()
        child.started = time.monotonic()
        child.restart_at = None
        log.info("%s started (pid %d)", child.name, child.process.pid)

    def _watch(self) -> None:
        """Wait for a child to die (or a restart to fall due) and deal with it."""
        now = time.monotonic()
        due = [c.restart_at for c in self.children if c.restart_at is not None]
        timeout = max(0.0, min(due) - now) if due else 0.5
        sentinels = [c.process.sentinel for c in self.children if c.restart_at is None]
        multiprocessing.connection.wait(sentinels, timeout=min(timeout, 0.5))
        if self.signals:
            return
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is None and not child.process.is_alive():
                code = child.process.exitcode
                lived = now - child.started
                child.backoff = BACKOFF_MIN_S if lived >= STABLE_AFTER_S else min(
                    BACKOFF_MAX_S, child.backoff * 2 if child.restarts else BACKOFF_MIN_S)
                child.restart_at = now + child.backoff
                child.restarts += 1
                log.error("%s (pid %d) %s after %.1f s; restarting in %.1f s (restart #%d)",
                          child.name, child.process.pid, describe_exit(code), lived, child.backoff,
                          child.restarts)
            elif child.restart_at is not None and child.restart_at <= now:
                self._start(child)

    def _drain(self) -> int:
        log.info("draining: acceptor%s, then %d shard(s), then the coordinator",
                 " and gRPC gateway" if any(c.name == "grpc" for c in self.children) else "",
                 sum(1 for c in self.children if c.name.startswith("shard-")))
        if self.listener is not None:
            self.listener.close()  # connections not yet accepted are refused, not left hanging
        if self.http_listener is not None:
            self.http_listener.close()
        order = [[c for c in self.children if c.name in ("acceptor", "grpc")],
                 [c for c in self.children if c.name.startswith("shard-")],
                 [c for c in self.children if c.name == "coordinator"]]
        code = EXIT_OK
        for group in order:
            for child in group:
                if child.process is not None and child.process.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.process.pid, signal.SIGTERM)
            for child in group:
                if child.process is None:
                    continue
                child.process.join(DRAIN_TIMEOUT_S)
                if child.process.is_alive():
                    log.error("%s did not stop within %.0f s; killing it", child.name, DRAIN_TIMEOUT_S)
                    child.process.kill()
                    child.process.join(5)
                    code = EXIT_FORCED
                elif child.name.startswith("shard-") and child.process.exitcode not in (0, -signal.SIGTERM):
                    log.error("%s %s while draining", child.name, describe_exit(child.process.exitcode))
        log.info("stopped")
        return code

    def _stop_all(self) -> None:
        for child in reversed(self.children):
            if child.process is not None and child.process.is_alive():
                child.process.terminate()
        for child in self.children:
            if child.process is not None:
                child.process.join(10)
                if child.process.is_alive():
                    child.process.kill()


def clean_stale_run_dirs() -> None:
    """Remove run dirs (Unix sockets) left in the temp dir by supervisors that were killed."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        if not name.startswith("shardq-"):
            continue
        path = os.path.join(base, name)
        try:
            with open(os.path.join(path, "supervisor.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue  # not ours, or not a run dir
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def serve(cfg: Config) -> int:
    """`shardq serve`: the supervisor and its processes."""
    return Supervisor(cfg).run()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
