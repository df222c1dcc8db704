"""The insight commands of the `shardq` CLI: `dlq groups`, group/filter options of `dlq requeue`,
`dlq delete`, `dlq purge`, `delete`, `search` and `types`.

As cli_commands.py: one small function per command, a table for people, ``--json`` for scripts.
Changing many tasks at once asks for ``--yes`` (or shows what it would do with ``--dry-run``).
"""

from __future__ import annotations

import argparse
import re
import time
from typing import Any

from shardq.cli_commands import (
    STATUSES,
    CliError,
    _clip,
    _iso_time,
    _non_negative,
    _priority,
    cmd_dlq_requeue,
    common_options,
    duration,
    print_json,
    print_table,
    relative,
)

_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])\Z")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(text: str) -> int:
    """An ISO time, or a duration ago (``30m``, ``2h``, ``7d``): epoch ms."""
    m = _AGO.match(text.strip())
    if m:
        return int((time.time() - float(m.group(1)) * _UNIT_S[m.group(2)]) * 1000)
    return int(_iso_time(text).timestamp() * 1000)


def _add_filters(p: argparse.ArgumentParser, *, group: bool = True) -> None:
    g = p.add_argument_group("which tasks (all given must match)")
    if group:
        g.add_argument("--group", metavar="G", help="a dead-letter group (from `shardq dlq groups`)")
    g.add_argument("--error", metavar="TEXT", help="the error contains TEXT (case-insensitive)")
    g.add_argument("--since", type=_when, metavar="TIME", help="reached its status at or after TIME "
                   "(ISO time, or a duration ago: 30m, 2h, 7d)")
    g.add_argument("--until", type=_when, metavar="TIME", help="reached its status at or before TIME")
    p.add_argument("--dry-run", action="store_true", help="only say how many tasks would be affected")


def uses_bulk(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) is not None for k in ("group", "error", "since", "until")) or \
        bool(getattr(args, "dry_run", False))


def add_triage_commands(sub: Any, dsub: Any) -> None:
    """Register the commands above on ``sub`` and ``dsub`` (`shardq dlq`'s subcommands), and give
    `dlq requeue` the group and filter options (BULK)."""
    common = [common_options()]
    requeue = dsub.choices["requeue"]
    _add_filters(requeue)
    requeue.set_defaults(handler=cmd_dlq_requeue_bulk)

    p = dsub.add_parser("groups", parents=common, help="dead letters grouped by type and normalised error")
    p.add_argument("--type", help="only this task type")
    p.set_defaults(handler=cmd_dlq_groups)

    p = dsub.add_parser("delete", parents=common, help="delete dead letters of a group or a filter")
    p.add_argument("--type", help="only tasks of this type")
    _add_filters(p)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=cmd_dlq_delete)

    p = dsub.add_parser("purge", parents=common, help="delete every dead letter (of --type)")
    p.add_argument("--type", help="only tasks of this type")
    p.add_argument("--dry-run", action="store_true", help="only say how many would be deleted")
    p.add_argument("--yes", action="store_true", help="confirm: without it nothing is deleted")
    p.set_defaults(handler=cmd_dlq_purge)

    p = sub.add_parser("delete", parents=common,
                       help="delete finished tasks (completed, cancelled, dead_letter) by id or filter")
    p.add_argument("ids", nargs="*", metavar="ID", help="these tasks")
    p.add_argument("--status", choices=("completed", "cancelled", "dead_letter"),
                   help="without ids: delete tasks of this status that match the filters")
    p.add_argument("--type", help="only tasks of this type")
    _add_filters(p, group=True)
    p.add_argument("--yes", action="store_true", help="confirm a delete by filter")
    p.set_defaults(handler=cmd_delete)

    p = sub.add_parser("search", parents=common, help="find tasks by id prefix, type, status, "
                       "priority, time and error text")
    p.add_argument("--id-prefix", metavar="HEX", help="ids that start with this")
    p.add_argument("--type", help="only this task type")
    p.add_argument("--status", action="append", choices=STATUSES, help="only this status (repeatable)")
    p.add_argument("--min-priority", type=_priority, metavar="P")
    p.add_argument("--max-priority", type=_priority, metavar="P")
    for name, what in (("created", "submitted"), ("updated", "last changed")):
        p.add_argument(f"--{name}-after", type=_when, metavar="TIME", help=f"{what} at or after TIME")
        p.add_argument(f"--{name}-before", type=_when, metavar="TIME", help=f"{what} at or before TIME")
    p.add_argument("--error", metavar="TEXT", help="the error contains TEXT (case-insensitive)")
    p.add_argument("--limit", type=_non_negative(int), default=20, metavar="N",
                   help="at most N tasks; 0 for all (default 20)")
    p.add_argument("--cursor", help="resume where an earlier --json search stopped")
    p.set_defaults(handler=cmd_search)

    p = sub.add_parser("types", parents=common, help="per task type: depth, oldest pending, "
                       "throughput, run time and queue wait percentiles")
    p.add_argument("--type", help="only this task type")
    p.set_defaults(handler=cmd_types)


# -- dead letters ------------------------------------------------------------------------------


def cmd_dlq_requeue_bulk(args: argparse.Namespace, client: Any) -> int:
    """`dlq requeue`: by ids or --type as before (REQUEUE), by group or filter with BULK."""
    if not uses_bulk(args):
        return cmd_dlq_requeue(args, client)
    if args.ids:
        raise CliError("give task ids, or --group/--error/--since/--until, not both", code=2)
    return cmd_bulk(args, client, "requeue")


def cmd_dlq_groups(args: argparse.Namespace, client: Any) -> int:
    answer = client.dlq_groups(args.type)
    if args.json:
        print_json(answer)
        return 0
    now = int(time.time() * 1000)
    print_table(("group", "type", "count", "first", "last", "error", "sample"),
                [[g["group"], g["type"], g["count"], relative(g["first_ms"], now), relative(g["last_ms"], now),
                  _clip(g["error"], 50), g["sample"]] for g in answer["groups"]],
                empty="the dead-letter queue is empty")
    if answer["groups"]:
        print(f"{answer['total']} dead letters in {len(answer['groups'])} groups; "
              "`shardq dlq requeue --group G` or `shardq dlq delete --group G`")
    return 0


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"type": getattr(args, "type", None), "group": getattr(args, "group", None),
            "error": args.error, "since_ms": args.since, "until_ms": args.until}


def cmd_bulk(args: argparse.Namespace, client: Any, action: str, status: str = "dead_letter") -> int:
    """Requeue or delete by group/filter: a dry run counts, a delete asks for --yes."""
    filters = _filters(args)
    limit = getattr(args, "limit", None) or None
    if action == "delete" and not args.dry_run and not getattr(args, "yes", False):
        counted = client.bulk(action, status=status, dry_run=True, limit=limit, **filters)["matched"]
        raise CliError(f"this would delete {counted} {status} task(s); add --yes to delete them "
                       "(or --dry-run to only count)", code=2)
    answer = client.bulk(action, status=status, dry_run=args.dry_run, limit=limit, **filters)
    if args.json:
        print_json(answer)
    elif args.dry_run:
        verb = "requeued" if action == "requeue" else "deleted"
        print(f"{answer['matched']} {status} task(s) would be {verb} (dry run: nothing changed)")
    else:
        print(f"{'requeued' if action == 'requeue' else 'deleted'} "
              f"{answer['requeued' if action == 'requeue' else 'deleted']}")
    return 0


def cmd_dlq_delete(args: argparse.Namespace, client: Any) -> int:
    if not any(v is not None for v in _filters(args).values()):
        raise CliError("dlq delete needs --group, --type, --error, --since or --until "
                       "(to delete every dead letter: shardq dlq purge --yes)", code=2)
    return cmd_bulk(args, client, "delete")


def cmd_dlq_purge(args: argparse.Namespace, client: Any) -> int:
    args.group = args.error = args.since = args.until = None
    return cmd_bulk(args, client, "delete")


def cmd_delete(args: argparse.Namespace, client: Any) -> int:
    if args.ids:
        if args.status or any(v is not None for v in _filters(args).values()):
            raise CliError("give task ids, or --status with filters, not both", code=2)
        if args.dry_run:
            raise CliError("--dry-run applies to a delete by filter", code=2)
        answer = client.delete(args.ids)
        failed = [r for r in answer["results"] if "error" in r]
        if args.json:
            print_json(answer)
        else:
            print(f"deleted {answer['deleted']}")
            for r in failed:
                print(f"{r['id']}: {r['error'].get('message')} ({r['error'].get('code')})")
        if failed:
            raise CliError(f"{len(failed)} of {len(args.ids)} tasks not deleted")
        return 0
    if args.status is None:
        raise CliError("give task ids, or --status completed|cancelled|dead_letter with filters", code=2)
    return cmd_bulk(args, client, "delete", args.status)


# -- search and types -----------------------------------------------------------------------------


def cmd_search(args: argparse.Namespace, client: Any) -> int:
    filters = {"id_prefix": args.id_prefix, "type": args.type, "status": args.status,
               "min_priority": args.min_priority, "max_priority": args.max_priority,
               "created_from": args.created_after, "created_to": args.created_before,
               "updated_from": args.updated_after, "updated_to": args.updated_before, "error": args.error}
    found: list[dict[str, Any]] = []
    cursor = args.cursor
    while True:
        want = 1000 if not args.limit else min(1000, args.limit - len(found))
        answer = client.search(limit=want, cursor=cursor, **filters)
        found += answer["tasks"]
        cursor = answer["cursor"]
        if cursor is None or (args.limit and len(found) >= args.limit):
            break
    if args.json:
        print_json({"tasks": found, "cursor": cursor})
        return 0
    now = int(time.time() * 1000)
    print_table(("id", "type", "status", "priority", "attempt", "updated", "error"),
                [[t["id"], t["type"], t["status"], t["priority"], t["attempt"], relative(t["updated_ms"], now),
                  _clip(t["error"])] for t in found], empty="no task matches")
    if cursor is not None:
        print(f"(first {len(found)} shown; --limit N for more, --limit 0 for all)")
    return 0


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.1f}s"


def cmd_types(args: argparse.Namespace, client: Any) -> int:
    types = client.type_stats(args.type)
    if args.json:
        print_json(types)
        return 0
    print_table(("type", "pending", "running", "failed", "dead", "oldest", "done/min",
                 "run p50/p95/p99", "wait p50/p95/p99"),
                [[t["type"], t["pending"], t["in_progress"], t["failed"], t["dead_letter"],
                  "-" if t["oldest_pending_age_s"] is None else duration(t["oldest_pending_age_s"]),
                  t["completed_last_minute"],
                  "/".join(_secs(t["run_time_s"][k]) for k in ("p50", "p95", "p99")),
                  "/".join(_secs(t["queue_wait_s"][k]) for k in ("p50", "p95", "p99"))] for t in types],
                empty="no task types")
    return 0
