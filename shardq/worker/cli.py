"""``shardq worker module:app``: the command line of the worker runtime.

``shardq.cli`` registers the subcommand with ``add_arguments(parser)`` and runs it with
``run(args)``; ``python -m shardq.worker`` does the same on its own (``main``).

Settings come from the ``worker`` section of the config (file ``--config``, then
``SHARDQ_WORKER__*`` environment variables), and the flags override them. Exit codes: 0 drained
(SIGTERM/SIGINT, or ``--burst`` found the queue empty); 1 the broker refused the worker or an
outcome could not be delivered; 2 bad flags, config or app; 4 a second signal cut the drain short.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
import traceback
from typing import Any

from shardq.config import load_config
from shardq.errors import ConfigError
from shardq.logs import JsonFormatter
from shardq.process import EXIT_CONFIG
from shardq.worker.app import load_app
from shardq.worker.runtime import WorkerRuntime

DEFAULT_URL = "shardq://127.0.0.1:7070"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def _shard(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run the task handlers of an app: claim tasks from the broker, run them, "
                          "report their outcomes. SIGTERM drains and exits 0.")
    parser.add_argument("app", metavar="MODULE:APP",
                        help="the shardq.App to run, e.g. myproject.tasks:app (MODULE alone means "
                             "MODULE:app); the current directory is importable")
    parser.add_argument("--server", metavar="URL", default=None,
                        help=f"broker URL (default: $SHARDQ_URL, else {DEFAULT_URL})")
    parser.add_argument("--concurrency", type=_positive_int, default=None, metavar="N",
                        help="handlers run at once (default: worker.concurrency, 4)")
    parser.add_argument("--pool", choices=("thread", "process"), default=None,
                        help="where sync handlers run: threads of this process, or one child "
                             "process per slot for CPU-bound or GIL-holding code "
                             "(default: worker.pool, thread)")
    parser.add_argument("--burst", action="store_true",
                        help="exit 0 once no ready task is left (tasks scheduled for later stay)")
    parser.add_argument("--types", metavar="A,B", default=None,
                        help="claim only these task types (default: every type the app handles)")
    parser.add_argument("--worker-id", metavar="ID", default=None,
                        help="this worker's id at the broker (default: HOST-PID-RANDOM)")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="config.yaml to read the worker section from (default: none)")
    parser.add_argument("--heartbeat-interval-ms", type=_positive_int, default=None, metavar="N",
                        help="HEARTBEAT period (default: worker.heartbeat_interval_ms, 15000; "
                             "lowered to fit the broker's heartbeat interval and lease)")
    parser.add_argument("--shutdown-timeout", type=_seconds, default=None, metavar="S",
                        help="on SIGTERM, seconds to wait for running tasks before releasing them "
                             "(default: worker.shutdown_timeout_s, 60)")
    parser.add_argument("--shard", type=_shard, default=None, metavar="K",
                        help="connect to shard K of a multi-shard broker (the HELLO shard hint): "
                             "run one worker per shard and no claim crosses shards while its "
                             "shard has work (default: claim from every shard in turn, see --no-spread)")
    parser.add_argument("--no-spread", dest="spread", action="store_false",
                        help="claim and report on one connection, wherever the acceptor puts it "
                             "(default: on a multi-shard broker, a connection per shard; claims "
                             "go to the shards in turn and each RESULT to its tasks' owner)")
    parser.add_argument("--prefetch", type=int, default=None, metavar="N",
                        help="claimed tasks that may wait for a free slot (0: none). Their leases "
                             "and timeouts run while they wait, so fewer are held when handlers "
                             "are slow: none waits more than about 1 s (default: 8 per unit of concurrency)")
    parser.add_argument("--api-key", metavar="KEY", default=None,
                        help="the key to send in HELLO when the broker has auth on "
                             "(default: $SHARDQ_API_KEY)")
    parser.add_argument("--tls-ca", metavar="FILE", default=None,
                        help="with a shardqs:// URL: the CA file that signed the broker's "
                             "certificate (default: $SHARDQ_TLS_CA, else the system CAs)")
    parser.add_argument("--tls-cert", metavar="FILE", default=None,
                        help="with a shardqs:// URL: this worker's client certificate, for a "
                             "broker that asks for one (default: $SHARDQ_TLS_CERT)")
    parser.add_argument("--tls-key", metavar="FILE", default=None,
                        help="the private key of --tls-cert (default: $SHARDQ_TLS_KEY)")
    parser.add_argument("--log-level", default=None,
                        choices=("debug", "info", "warning", "error", "critical"),
                        help="default: monitoring.log_level, info (one line per task at info)")


class _LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines are buffered and flushed every 50 ms by the worker, at once from WARNING up:
    one write per line would cost more than a no-op task."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            if record.levelno >= logging.WARNING:
                self.stream.flush()
        except Exception:  # noqa: BLE001
            self.handleError(record)

    def emit_lines(self, levelno: int, name: str, lines: list[tuple[float, str]]) -> None:
        """Many (unix time, message) lines at once (the per-task lines): one record reused, one
        write. The worker calls it when this is the only handler (reports.log_lines)."""
        record = logging.LogRecord(name, levelno, "", 0, "", None, None)
        try:
            fmt = self.format
            out = []
            for created, line in lines:
                record.created = created
                record.msecs = (created - int(created)) * 1000
                record.msg = line
                out.append(fmt(record))
            out.append("")
            self.acquire()
            try:
                self.stream.write("\n".join(out))
            finally:
                self.release()
        except Exception:  # noqa: BLE001
            self.handleError(record)


class _Formatter(logging.Formatter):
    """The server's line format; the date part is formatted once a second, not once a line."""

    _second = -1
    _date = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        second = int(record.created)
        if second != self._second:
            self._date = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._date},{int(record.msecs):03d}"


def setup_logging(level: str, json_logs: bool) -> None:
    """Log lines to stderr. A worker logs a line per task, so the cost per line matters: no caller
    lookup, thread or process names in the records (the format does not show them)."""
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(os.dup(sys.stderr.fileno()), "w"), 1 << 16),
                              encoding="utf-8", errors="backslashreplace", line_buffering=False)
    handler = _LogHandler(stream)
    if json_logs:
        handler.setFormatter(JsonFormatter("worker"))
    else:
        handler.setFormatter(_Formatter("%(asctime)s %(levelname)s worker %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        "worker.concurrency": args.concurrency, "worker.pool": args.pool,
        "worker.heartbeat_interval_ms": args.heartbeat_interval_ms,
        "monitoring.log_level": args.log_level,
    }
    try:
        cfg = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"shardq worker: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.monitoring.log_level, cfg.monitoring.json_logs)
    try:
        app = load_app(args.app)
    except ValueError as exc:
        print(f"shardq worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception:  # noqa: BLE001 -- the app module itself is broken: show where
        print(f"shardq worker: importing {args.app} failed:\n{traceback.format_exc()}", file=sys.stderr)
        return EXIT_CONFIG
    types = [t.strip() for t in args.types.split(",") if t.strip()] if args.types else None
    w = cfg.worker
    try:
        worker = WorkerRuntime(
            app, url=args.server or os.environ.get("SHARDQ_URL") or DEFAULT_URL,
            worker_id=args.worker_id, concurrency=w.concurrency, pool=w.pool, types=types,
            burst=args.burst, heartbeat_interval_ms=w.heartbeat_interval_ms,
            shutdown_timeout_s=(w.shutdown_timeout_s if args.shutdown_timeout is None
                                else args.shutdown_timeout),
            max_inactivity_s=w.max_inactivity_s,
            api_key=args.api_key if args.api_key is not None else os.environ.get("SHARDQ_API_KEY"),
            app_spec=args.app, shard=args.shard, spread=args.spread, prefetch=args.prefetch,
            **tls_options(args, os.environ))
    except ValueError as exc:
        print(f"shardq worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return worker.run()


def tls_options(args: argparse.Namespace, env: Any) -> dict[str, str | None]:
    """--tls-ca/--tls-cert/--tls-key, each defaulting to its SHARDQ_TLS_* variable."""
    return {name: getattr(args, name) if getattr(args, name) is not None
            else env.get(f"SHARDQ_{name.upper()}") or None
            for name in ("tls_ca", "tls_cert", "tls_key")}


def main(argv: list[str] | None = None) -> int:
    """``python -m shardq.worker``: the same as ``shardq worker``."""
    parser = argparse.ArgumentParser(prog="shardq worker")
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = ["add_arguments", "main", "run"]
