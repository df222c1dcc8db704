"""`shardq pause | resume | limits`: the per-type controls from the command line (feature
``type-controls``; docs/cli.md). Human tables by default, ``--json`` for scripts."""

from __future__ import annotations

import argparse
from typing import Any

from shardq.cli_commands import CliError, common_options, print_json, print_table
from shardq.client.controls import FeatureMissing

_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """``10``, ``10/s``, ``600/m``, ``3600/h`` -> claims per second (> 0)."""
    number, _, unit = text.strip().partition("/")
    try:
        value = float(number)
        per = _PER[unit or "s"]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"must be a number of claims per second, optionally /s, /m or /h (e.g. 50/s), got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value / per


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def add_control_commands(sub: Any) -> None:
    common = [common_options()]
    p = sub.add_parser("pause", parents=common, help="stop handing out tasks of a type (submits go on)")
    p.add_argument("type", help="task type")
    p.set_defaults(handler=cmd_pause)
    p = sub.add_parser("resume", parents=common, help="hand out tasks of a paused type again")
    p.add_argument("type", help="task type")
    p.set_defaults(handler=cmd_resume)

    limits = sub.add_parser("limits", help="concurrency caps and rate limits per task type")
    lsub = limits.add_subparsers(dest="limits_action", required=True, metavar="{set,clear,show}")
    p = lsub.add_parser("set", parents=common, help="set a type's cap and/or rate (broker-wide)")
    p.add_argument("type", help="task type")
    p.add_argument("--max-concurrency", type=_positive_int, metavar="N",
                   help="at most N tasks of the type in progress in the whole broker")
    p.add_argument("--rate", type=parse_rate, metavar="R[/s|/m|/h]",
                   help="at most R claims per second (or per minute, hour) in the whole broker")
    p.add_argument("--burst", type=_positive_int, metavar="B",
                   help="token bucket size for --rate (default: a tenth of a second's worth, >= 1)")
    p.set_defaults(handler=cmd_limits_set)
    p = lsub.add_parser("clear", parents=common, help="remove a type's cap and/or rate")
    p.add_argument("type", help="task type")
    p.add_argument("--max-concurrency", action="store_true", help="only the cap")
    p.add_argument("--rate", action="store_true", help="only the rate (and its burst)")
    p.set_defaults(handler=cmd_limits_clear)
    p = lsub.add_parser("show", parents=common, help="paused and limited types, with live numbers")
    p.add_argument("type", nargs="?", help="only this type")
    p.set_defaults(handler=cmd_limits_show)


def _call(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except FeatureMissing as exc:
        raise CliError(str(exc)) from None


def _print_change(args: argparse.Namespace, answer: dict[str, Any], verb: str) -> None:
    if args.json:
        print_json(answer)
        return
    c = answer["control"]
    print(f"{verb} {c['type']}: {summary(c)}")
    if answer.get("not_reached"):
        print(f"  (shards {', '.join(map(str, answer['not_reached']))} are down: they take it before "
              "they hand out tasks again)")


def summary(c: dict[str, Any]) -> str:
    parts = ["paused" if c.get("paused") else "not paused"]
    parts.append(f"max concurrency {c['max_concurrency']}" if c.get("max_concurrency") is not None
                 else "no concurrency cap")
    parts.append(f"rate {c['rate']:g}/s burst {c.get('burst')}" if c.get("rate") is not None else "no rate limit")
    return ", ".join(parts)


def cmd_pause(args: argparse.Namespace, client: Any) -> int:
    _print_change(args, _call(client.pause_type, args.type), "paused")
    return 0


def cmd_resume(args: argparse.Namespace, client: Any) -> int:
    _print_change(args, _call(client.resume_type, args.type), "resumed")
    return 0


def cmd_limits_set(args: argparse.Namespace, client: Any) -> int:
    kw = {k: getattr(args, k) for k in ("max_concurrency", "rate", "burst") if getattr(args, k) is not None}
    if not kw:
        raise CliError("limits set: give --max-concurrency, --rate or both", code=2)
    _print_change(args, _call(client.set_limits, args.type, **kw), "limits of")
    return 0


def cmd_limits_clear(args: argparse.Namespace, client: Any) -> int:
    both = not args.max_concurrency and not args.rate
    kw: dict[str, Any] = {}
    if both or args.max_concurrency:
        kw["max_concurrency"] = None
    if both or args.rate:
        kw["rate"] = None
    _print_change(args, _call(client.set_limits, args.type, **kw), "limits of")
    return 0


def cmd_limits_show(args: argparse.Namespace, client: Any) -> int:
    rows = _call(client.controls, args.type)
    if args.json:
        print_json(rows)
        return 0
    print_table(("type", "paused", "max conc.", "running", "rate/s", "burst", "ready", "blocked on shards"),
                [[r["type"], "yes" if r["paused"] else "no",
                  "-" if r["max_concurrency"] is None else r["max_concurrency"], r["running"],
                  "-" if r["rate"] is None else f"{r['rate']:g}", "-" if r["burst"] is None else r["burst"],
                  r["ready"], _blocked(r)] for r in rows],
                empty="(no paused or limited types)")
    return 0


def _blocked(row: dict[str, Any]) -> str:
    # Only where tasks wait: a shard with none ready and no slot is blocked for nobody.
    why = sorted((int(i), s["blocked_by"]) for i, s in row["shards"].items()
                 if s.get("blocked_by") and (s.get("ready") or s["blocked_by"] == "paused"))
    return ", ".join(f"{i}:{b}" for i, b in why) or "-"
