"""The client commands of the `shardq` CLI: submit, status, cancel, list, stats, workers, dlq, ping.

One small function per command; each takes the parsed arguments and an open ``shardq.Client``
and returns the exit code. Human output is a table (``print_table``); ``--json`` prints the
protocol's objects as they are (times are epoch milliseconds). Errors are raised, and
``run`` turns them into one ``shardq: <message>`` line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson

from shardq.cli_taskopts import add_submit_options, submit_options
from shardq.client.connection import Connection, check_tls_options, parse_target
from shardq.client.models import Job
from shardq.errors import QueueFull, ShardqError, Unauthorized, WireError, error_from_wire
from shardq.protocol.frames import MsgType
from shardq.tls import client_context

DEFAULT_URL = "shardq://127.0.0.1:7070"
STATUSES = ("pending", "in_progress", "completed", "failed", "dead_letter", "cancelled")


class CliError(ShardqError):
    """A failure the CLI reports as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- output helpers -----------------------------------------------------------------------


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "(none)") -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    if not rows:
        print(empty)
        return
    cells = [[str(h).upper() for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + ("  " if len(r) > 1 else "") + r[-1])


def print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def duration(seconds: float) -> str:
    """3s, 2m, 5h, 2d: one unit, rounded down."""
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def uptime(seconds: int) -> str:
    """1h 2m 3s style (the two largest units)."""
    parts, s = [], int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
    return " ".join(parts[:2])


def relative(ms: int | None, now_ms: int | None = None) -> str:
    """'3s ago' for the past, 'in 2m' for the future, '-' for none."""
    if ms is None:
        return "-"
    now = int(time.time() * 1000) if now_ms is None else now_ms
    delta = (now - ms) / 1000
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1048576:.1f} MiB"


def _clip(text: str | None, width: int = 60) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def task_dict(task: Any) -> dict[str, Any]:
    """A TaskInfo as the wire shows it (without payload and result bytes)."""
    d = dataclasses.asdict(task)
    d.pop("payload", None)
    d.pop("result", None)
    for key in ("dependency_results", "dependency_results_omitted", "expires_at_ms", "unique_key"):
        if not d.get(key):  # task options: shown, as on the wire, only when the task has them
            d.pop(key, None)
    return d


# -- argument types ---------------------------------------------------------------------------


def _json_text(text: str) -> bytes:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    return text.encode()


def _iso_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO time (e.g. 2025-01-31T14:00:00+00:00)") from None
    return when if when.tzinfo is not None else when.astimezone()  # naive: local time


def _priority(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"must be an integer 0..255, got {text!r}")
    return value


def _non_negative(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
        return value
    return parse


# -- parser -----------------------------------------------------------------------------------------


def common_options() -> argparse.ArgumentParser:
    """The flags every client command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument("--server", metavar="URL", default=os.environ.get("SHARDQ_URL") or DEFAULT_URL,
                   help=f"shardq://host:port, or shardqs://host:port for TLS (default: $SHARDQ_URL, "
                        f"else {DEFAULT_URL})")
    g.add_argument("--api-key", metavar="KEY", default=os.environ.get("SHARDQ_API_KEY"),
                   help="API key sent in HELLO (default: $SHARDQ_API_KEY)")
    g.add_argument("--tls-ca", metavar="FILE", default=os.environ.get("SHARDQ_TLS_CA") or None,
                   help="with a shardqs:// URL: the CA file that signed the server's certificate "
                        "(default: $SHARDQ_TLS_CA, else the system CAs)")
    g.add_argument("--tls-cert", metavar="FILE", default=os.environ.get("SHARDQ_TLS_CERT") or None,
                   help="client certificate, for a server that asks for one (default: $SHARDQ_TLS_CERT)")
    g.add_argument("--tls-key", metavar="FILE", default=os.environ.get("SHARDQ_TLS_KEY") or None,
                   help="the private key of --tls-cert (default: $SHARDQ_TLS_KEY)")
    g.add_argument("--timeout", type=_non_negative(float), default=10.0, metavar="S",
                   help="seconds to wait for the server (default 10)")
    g.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    return p


def add_client_commands(sub: Any) -> Any:
    """Register submit, status, cancel, list, stats, workers and dlq on ``sub``."""
    common = [common_options()]

    p = sub.add_parser("submit", parents=common, help="submit a task; prints its id")
    p.add_argument("type", help="task type, e.g. send_email")
    payload = p.add_mutually_exclusive_group()
    payload.add_argument("--payload", type=_json_text, metavar="JSON", help="payload as JSON text")
    payload.add_argument("--payload-file", metavar="FILE", help="payload: the file's raw bytes (- for stdin)")
    payload.add_argument("--payload-text", metavar="TEXT", help="payload: this text as UTF-8, not JSON")
    p.add_argument("--priority", type=_priority, help="0..255, higher first (server default 100)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=_non_negative(float), metavar="S", help="run no sooner than S seconds from now")
    when.add_argument("--at", type=_iso_time, metavar="TIME", help="run no sooner than this ISO time")
    p.add_argument("--depends-on", action="append", metavar="ID", help="wait for this task to complete (repeatable)")
    p.add_argument("--max-retries", type=_non_negative(int), metavar="N", help="server default 3")
    p.add_argument("--timeout-seconds", type=_non_negative(int), metavar="S", help="server default 300")
    p.add_argument("--id", metavar="UUID", help="client-chosen id: submitting it again is a no-op")
    add_submit_options(p, _iso_time, _non_negative(float))  # --ttl, --unique-key, ...
    p.set_defaults(handler=cmd_submit)

    p = sub.add_parser("status", parents=common, help="show one or many tasks")
    p.add_argument("ids", nargs="+", metavar="ID")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("cancel", parents=common,
                       help="cancel a task that is not finished (a running one: its worker stops it)")
    p.add_argument("id", metavar="ID")
    p.set_defaults(handler=cmd_cancel)

    p = sub.add_parser("list", parents=common, help="list tasks by status, type and priority")
    _add_list_filters(p, status=True, default_limit=20)
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("stats", parents=common, help="counts in total and per shard; workers; uptime")
    p.set_defaults(handler=cmd_stats)

    p = sub.add_parser("workers", parents=common, help="live workers with their CPU and memory")
    p.set_defaults(handler=cmd_workers)

    p = sub.add_parser("ping", parents=common,
                       help="check that the server answers (needs no API key: for health checks)")
    p.set_defaults(handler=cmd_ping, raw=True)

    dlq = sub.add_parser("dlq", help="the dead-letter queue: list, requeue, purge")
    dsub = dlq.add_subparsers(dest="dlq_action", required=True,
                              metavar="{list,groups,requeue,delete,purge}")
    p = dsub.add_parser("list", parents=common, help="tasks in dead_letter")
    _add_list_filters(p, status=False, default_limit=20)
    p.set_defaults(handler=cmd_dlq_list)
    p = dsub.add_parser("requeue", parents=common, help="move dead letters back to pending")
    p.add_argument("ids", nargs="*", metavar="ID", help="these tasks (default: every dead letter)")
    p.add_argument("--type", help="only tasks of this type")
    p.add_argument("--limit", type=_non_negative(int), metavar="N",
                   help="at most N tasks (server default 1000)")
    p.set_defaults(handler=cmd_dlq_requeue)
    return dsub  # cli_triage.py adds dlq groups/delete/purge and the --group filters of requeue


def _add_list_filters(p: argparse.ArgumentParser, *, status: bool, default_limit: int) -> None:
    if status:
        p.add_argument("--status", choices=STATUSES, default="pending", help="(default: pending)")
    p.add_argument("--type", help="only tasks of this type")
    p.add_argument("--min-priority", type=_priority, metavar="P")
    p.add_argument("--max-priority", type=_priority, metavar="P")
    p.add_argument("--limit", type=_non_negative(int), default=default_limit, metavar="N",
                   help=f"at most N tasks; 0 for all (default {default_limit})")


# -- running --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run a client command; every error becomes one line on stderr."""
    client = None
    try:
        if getattr(args, "offline", False) or getattr(args, "raw", False):
            return int(args.handler(args, None))
        from shardq.client.sync import Client
        try:
            client = Client(args.server, timeout=args.timeout or None, api_key=args.api_key,
                            retries=1, name="shardq-cli", tls_ca=args.tls_ca,
                            tls_cert=args.tls_cert, tls_key=args.tls_key)
        except ValueError as exc:
            raise CliError(str(exc), code=2) from None
        return int(args.handler(args, client))
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except QueueFull as exc:
        return _fail(f"queue full: {exc.message} (retry after {exc.retry_after_ms} ms)")
    except WireError as exc:
        return _fail(f"{exc.message} ({exc.code})" if exc.message else exc.code)
    except BrokenPipeError:  # `shardq list | head`: the reader left; stay quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (OSError, ShardqError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {args.timeout:g} s"
        connected = client is not None and bool(client.server_info)
        verb = "lost the connection to" if connected else "cannot connect to"
        return _fail(f"{verb} {args.server}: {reason}")
    except KeyboardInterrupt:
        return 130
    finally:
        if client is not None:
            client.close()


def _fail(message: str, code: int = 1) -> int:
    print(f"shardq: {message}", file=sys.stderr)
    return code


# -- commands -----------------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace, client: Any) -> int:
    payload: bytes = b""
    if args.payload is not None:
        payload = args.payload
    elif args.payload_text is not None:
        payload = args.payload_text.encode()
    elif args.payload_file is not None:
        try:
            if args.payload_file == "-":
                payload = sys.stdin.buffer.read()
            else:
                with open(args.payload_file, "rb") as f:
                    payload = f.read()
        except OSError as exc:
            raise CliError(f"cannot read --payload-file {args.payload_file}: {exc.strerror}") from None
    try:
        options = submit_options(args)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    ids, duplicates = client.submit_many_detailed([Job(
        args.type, payload, args.priority, args.delay, args.at, args.depends_on, args.max_retries,
        args.timeout_seconds, args.id, **options)])
    if args.json:
        print_json({"id": ids[0], **({"duplicate": bool(duplicates)} if args.unique_key else {})})
    else:
        print(ids[0])
        if duplicates:
            print(f"shardq: a task of type {args.type} already holds unique key {args.unique_key!r}: "
                  "this is its id", file=sys.stderr)
    return 0


TASK_COLUMNS = ("id", "type", "status", "priority", "attempt", "retries", "updated", "error")


def _task_row(t: Any, now: int) -> list[Any]:
    return [t.id, t.type, t.status, t.priority, t.attempt, f"{t.retry_count}/{t.max_retries}",
            relative(t.updated_ms, now), _clip(t.error)]


def cmd_status(args: argparse.Namespace, client: Any) -> int:
    tasks = []
    for i in range(0, len(args.ids), 1000):
        tasks += client.status_many(args.ids[i:i + 1000])
    missing = [i for i, t in zip(args.ids, tasks) if t is None]
    if args.json:
        print_json([None if t is None else task_dict(t) for t in tasks])
    elif len(missing) < len(tasks):
        now = int(time.time() * 1000)
        print_table(TASK_COLUMNS, [_task_row(t, now) for t in tasks if t is not None])
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CliError(f"no task {shown}")
    return 0


def cmd_cancel(args: argparse.Namespace, client: Any) -> int:
    client.cancel(args.id)
    if args.json:
        print_json({"id": args.id, "status": "cancelled"})
    else:
        print(f"cancelled {args.id}")
    return 0


def _list(client: Any, args: argparse.Namespace, status: str) -> tuple[list[Any], bool]:
    """Up to ``--limit`` tasks, and whether there are more."""
    limit = args.limit or None
    page = 100 if limit is None else min(limit + 1, 1000)
    tasks = list(client.list(status, type=args.type, min_priority=args.min_priority,
                             max_priority=args.max_priority,
                             limit=None if limit is None else limit + 1, page_size=page))
    more = limit is not None and len(tasks) > limit
    return tasks[:limit], more


def cmd_list(args: argparse.Namespace, client: Any) -> int:
    tasks, more = _list(client, args, args.status)
    if args.json:
        print_json([task_dict(t) for t in tasks])
        return 0
    now = int(time.time() * 1000)
    print_table(("id", "type", "status", "priority", "attempt", "retries", "created", "scheduled", "error"),
                [[t.id, t.type, t.status, t.priority, t.attempt, f"{t.retry_count}/{t.max_retries}",
                  relative(t.created_ms, now), relative(t.scheduled_ms, now), _clip(t.error)]
                 for t in tasks], empty=f"no {args.status} tasks")
    if more:
        print(f"(first {args.limit} shown; --limit N for more, --limit 0 for all)")
    return 0


def disk_state(row: dict[str, Any]) -> str:
    """A shard's disk as `shardq stats` shows it: "ok 1.2 GiB free", "LOW 50 MiB free" (SUBMITs
    refused below persistence.min_free_disk_bytes) or "WRITES FAILING" (every write refused)."""
    free = row.get("disk_free_bytes")
    state = "WRITES FAILING" if row.get("writable") is False else "LOW" if row.get("disk_alarm") else "ok"
    return state if free is None else f"{state} {mib(free)} free"


def cmd_stats(args: argparse.Namespace, client: Any) -> int:
    stats = client.stats()
    if args.json:
        print_json(stats)
        return 0
    totals = stats["totals"]
    tiers = totals.get("by_tier", {})
    print_table(("status", "tasks"), [[s, totals.get(s, 0)] for s in STATUSES]
                + [["  scheduled", totals.get("scheduled", 0)]]
                + [[f"  {tier} tier", tiers.get(tier, 0)] for tier in ("high", "normal", "low")])
    print()
    print_table(("shard", *STATUSES, "connections", "rss", "disk"),
                [[row.get("shard"), *(row.get(s, 0) for s in STATUSES), row.get("connections"),
                  mib(row.get("rss")), disk_state(row)] for row in stats.get("shards", [])],
                empty="(no shards)")
    print()
    print(f"workers: {stats.get('workers', 0)}   connections: {stats.get('connections', 0)}   "
          f"uptime: {uptime(stats.get('uptime_s', 0))}")
    controls = stats.get("controls") or {}  # per-type controls: `shardq limits show` has more
    paused = sorted(t for t, c in controls.items() if c.get("paused"))
    limited = sorted(t for t, c in controls.items() if c.get("max_concurrency") or c.get("rate"))
    if paused or limited:
        print(f"paused types: {', '.join(paused) or '-'}   limited types: {', '.join(limited) or '-'}")
    return 0


def cmd_workers(args: argparse.Namespace, client: Any) -> int:
    workers = client.workers()
    if args.json:
        print_json(workers)
        return 0
    now = int(time.time() * 1000)
    rows = [[w.get("worker_id"), w.get("hostname"), w.get("pid"), ",".join(w.get("types") or ()) or "*",
             w.get("concurrency"), w.get("active", 0),
             None if w.get("cpu_percent") is None else f"{w['cpu_percent']:.1f}",
             mib(w.get("memory_rss")), w.get("state") if w.get("state") not in (None, "running") or
             not w.get("command") else f"running ({w['command']} ordered)",
             relative(w.get("last_seen_ms"), now)]
            for w in workers]
    print_table(("id", "host", "pid", "types", "concurrency", "active", "cpu %", "rss", "state", "last seen"),
                rows, empty="no live workers")
    return 0


def cmd_ping(args: argparse.Namespace, _client: Any) -> int:
    """One PING before any HELLO, over TLS for a shardqs:// URL. Answered (an ACK, or
    Unauthorized when the server wants an API key first) means up: exit 0."""
    try:
        host, port, tls = parse_target(args.server)
        check_tls_options(args.server, tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                          tls_key=args.tls_key)
        ctx = client_context(args.tls_ca, args.tls_cert, args.tls_key) if tls else None
    except ValueError as exc:
        raise CliError(str(exc), code=2) from None
    started = time.perf_counter()
    with Connection(host, port, timeout=args.timeout or None, ssl_context=ctx) as conn:
        answer = conn.wait_for(conn.send(MsgType.PING, {}))
    took_ms = (time.perf_counter() - started) * 1000
    auth = False
    if answer.type == MsgType.NACK:
        err = error_from_wire(answer.header.get("error") or {})
        if not isinstance(err, Unauthorized):
            raise err
        auth = True
    if args.json:
        print_json({"up": True, "ms": round(took_ms, 3), "auth_required": auth, "tls": tls})
    else:
        print(f"{args.server}: up ({took_ms:.1f} ms{', TLS' if tls else ''}"
              f"{', API key required' if auth else ''})")
    return 0


def cmd_dlq_list(args: argparse.Namespace, client: Any) -> int:
    tasks, more = _list(client, args, "dead_letter")
    if args.json:
        print_json([task_dict(t) for t in tasks])
        return 0
    now = int(time.time() * 1000)
    print_table(("id", "type", "priority", "attempt", "retries", "failed", "error"),
                [[t.id, t.type, t.priority, t.attempt, f"{t.retry_count}/{t.max_retries}",
                  relative(t.updated_ms, now), _clip(t.error)] for t in tasks],
                empty="the dead-letter queue is empty")
    if more:
        print(f"(first {args.limit} shown; --limit N for more, --limit 0 for all)")
    return 0


def cmd_dlq_requeue(args: argparse.Namespace, client: Any) -> int:
    if args.limit == 0:
        raise CliError("--limit must be at least 1", code=2)
    body = client.requeue(args.ids or None, type=args.type, limit=args.limit)
    results = body.get("results") or []
    failed = [r for r in results if "error" in r]
    if args.json:
        print_json(body)
    else:
        print(f"requeued {body.get('requeued', 0)}")
        if results:
            print_table(("id", "outcome"),
                        [[r["id"], r.get("status") or
                          f"{r['error'].get('code')}: {r['error'].get('message')}"] for r in results])
    if failed:
        raise CliError(f"{len(failed)} of {len(results)} tasks not requeued")
    return 0

