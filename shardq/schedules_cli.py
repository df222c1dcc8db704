"""`shardq schedule add | list | show | remove | pause | resume`: periodic schedules.

Registered by ``cli_commands.add_client_commands`` and run like the other client commands
(``cli_commands.run``: one open ``Client``, errors as one line, exit 1). Human output is a
table or ``key: value`` lines; ``--json`` prints the protocol's objects (times in epoch ms,
plus ``next_local`` / ``next_utc`` as ISO text).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from shardq.cli_commands import (
    CliError,
    _json_text,
    _non_negative,
    _priority,
    common_options,
    print_json,
    print_table,
    relative,
)
from shardq.errors import ShardqError, WireError
from shardq.schedule_specs import MISFIRE_POLICIES

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?\Z")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def duration_ms(text: str) -> int:
    """'2s', '500ms', '5m', '1h', '1d', or plain seconds -> milliseconds."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 5m, 1h, 1d, 500ms)")
    return int(round(float(m.group(1)) * _UNIT_MS[m.group(2)]))


def _every(text: str) -> int:
    ms = duration_ms(text)
    if ms < 1000 or ms % 1000:
        raise argparse.ArgumentTypeError(f"must be whole seconds, at least 1s, got {text!r}")
    return ms


def _name(text: str) -> str:
    return text  # the server checks it and names the field (one rule, in schedule_specs.py)


def add_schedule_commands(sub: Any) -> None:
    common = [common_options()]
    sched = sub.add_parser("schedule", help="periodic schedules: add, list, show, remove, pause, resume")
    ssub = sched.add_subparsers(dest="schedule_action", required=True,
                                metavar="{add,list,show,remove,pause,resume}")
    p = ssub.add_parser("add", parents=common, help="add a schedule that submits a task at each tick")
    p.add_argument("name", type=_name, help="the schedule's name (letters, digits, . _ : @ -)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR",
                      help='cron expression: 5 fields "min hour day month weekday", or 6 with seconds first')
    when.add_argument("--every", type=_every, metavar="DURATION",
                      help="a fixed interval (30s, 5m, 1h, 1d), at multiples of it since the Unix epoch")
    p.add_argument("--type", required=True, help="the type of the task each tick submits")
    payload = p.add_mutually_exclusive_group()
    payload.add_argument("--payload", type=_json_text, metavar="JSON", help="payload as JSON text")
    payload.add_argument("--payload-text", metavar="TEXT", help="payload: this text as UTF-8, not JSON")
    p.add_argument("--timezone", default="UTC", metavar="ZONE",
                   help="IANA zone the cron expression is read in, e.g. Europe/Paris (default UTC)")
    p.add_argument("--priority", type=_priority, help="0..255 (server default 100)")
    p.add_argument("--max-retries", type=_non_negative(int), metavar="N", help="server default 3")
    p.add_argument("--timeout-seconds", type=_non_negative(int), metavar="S", help="server default 300")
    p.add_argument("--misfire", choices=MISFIRE_POLICIES, default="skip",
                   help="a tick missed while the shard was down by more than --misfire-grace: "
                        "skip it (default) or run it once")
    p.add_argument("--misfire-grace", type=duration_ms, default=60_000, metavar="DURATION",
                   help="a tick this late still runs under 'skip' (default 60s)")
    p.add_argument("--paused", action="store_true", help="add it paused (resume starts it)")
    p.add_argument("--replace", action="store_true", help="replace the schedule of this name if there is one")
    p.set_defaults(handler=cmd_add)

    p = ssub.add_parser("list", parents=common, help="every schedule, with its next and last runs")
    p.set_defaults(handler=cmd_list)
    for action, handler, text in (("show", cmd_show, "one schedule, with its payload"),
                                  ("remove", cmd_remove, "delete a schedule (its tasks stay)"),
                                  ("pause", cmd_pause, "stop a schedule firing (durable)"),
                                  ("resume", cmd_resume, "fire again, from the next tick")):
        p = ssub.add_parser(action, parents=common, help=text)
        p.add_argument("name", type=_name)
        p.set_defaults(handler=handler)


def _call(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except WireError:
        raise
    except ShardqError as exc:  # the server lacks the feature: not a connection problem
        raise CliError(str(exc)) from None


def _when(s: dict[str, Any]) -> str:
    if s.get("cron") is not None:
        return f"cron {s['cron']}" + ("" if s["timezone"] == "UTC" else f" ({s['timezone']})")
    ms = s["every_ms"]
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms % size == 0:
            return f"every {ms // size}{unit}"
    return f"every {ms // 1000}s"


def _next(s: dict[str, Any]) -> str:
    if s["paused"]:
        return "paused"
    return f"{s['next_local']} ({relative(s['next_ms'])})"


def _summary(s: dict[str, Any]) -> None:
    state = "paused" if s["paused"] else f"next {_next(s)}"
    print(f"schedule {s['name']}: {_when(s)}, type {s['type']}, {state}")


def cmd_add(args: argparse.Namespace, client: Any) -> int:
    payload = args.payload if args.payload is not None else (
        args.payload_text.encode() if args.payload_text is not None else b"")
    s = _call(client.schedule_add, args.name, args.type, payload, cron=args.cron,
              every=None if args.every is None else args.every / 1000, timezone=args.timezone,
              priority=args.priority, max_retries=args.max_retries,
              timeout_seconds=args.timeout_seconds, misfire=args.misfire,
              misfire_grace=args.misfire_grace / 1000, paused=args.paused, replace=args.replace)
    if args.json:
        print_json(s)
    else:
        _summary(s)
    return 0


def cmd_list(args: argparse.Namespace, client: Any) -> int:
    rows = _call(client.schedules)
    if args.json:
        print_json(rows)
        return 0
    print_table(("name", "when", "type", "next", "next utc", "last fired", "last task", "fired", "misfires"),
                [(s["name"], _when(s), s["type"], _next(s), s["next_utc"] or "-",
                  relative(s["last_fired_ms"]), s["last_task_id"], s["fired"], s["misfires"])
                 for s in rows], empty="(no schedules)")
    return 0


def cmd_show(args: argparse.Namespace, client: Any) -> int:
    s = _call(client.schedule, args.name)
    payload: bytes = s.pop("payload")
    try:
        s["payload"] = payload.decode()
    except UnicodeDecodeError:
        s["payload"] = None
        s["payload_hex"] = payload.hex()
    if args.json:
        print_json(s)
        return 0
    for key in ("name", "type", "cron", "every_ms", "timezone", "paused", "next_local", "next_utc",
                "last_tick_ms", "last_fired_ms", "last_task_id", "fired", "misfires", "misfire",
                "misfire_grace_ms", "priority", "max_retries", "timeout_seconds", "shard", "payload"):
        if s.get(key) is not None:
            value = s[key]
            if key in ("last_fired_ms", "last_tick_ms"):
                value = f"{value} ({relative(value)})"
            print(f"{key}: {value}")
    if s.get("payload_hex"):
        print(f"payload (hex): {s['payload_hex']}")
    return 0


def cmd_remove(args: argparse.Namespace, client: Any) -> int:
    _call(client.schedule_remove, args.name)
    if args.json:
        print_json({"name": args.name, "removed": True})
    else:
        print(f"removed schedule {args.name}")
    return 0


def _pause(args: argparse.Namespace, client: Any, paused: bool) -> int:
    s = _call(client.schedule_pause if paused else client.schedule_resume, args.name)
    if args.json:
        print_json(s)
    else:
        _summary(s)
    return 0


def cmd_pause(args: argparse.Namespace, client: Any) -> int:
    return _pause(args, client, True)


def cmd_resume(args: argparse.Namespace, client: Any) -> int:
    return _pause(args, client, False)


__all__ = ["add_schedule_commands", "duration_ms"]
