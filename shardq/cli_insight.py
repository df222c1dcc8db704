"""The insight commands of the `shardq` CLI: history, explain, result.

Like cli_commands.py: one function per command, taking the parsed arguments and an open
``shardq.Client``; ``--json`` prints the protocol's objects as they are.

`shardq result` exit codes: 0 the task completed (its result is printed), 1 an error (no such
task, no result yet without --wait, a result that is not JSON with --json), 3 the task is
dead_letter, 4 it was cancelled, 5 --wait ran out of time first.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from shardq.cli_commands import CliError, common_options, print_json
from shardq.client.models import TaskCancelled, TaskFailed, WaitTimeout
from shardq.engine.history import timeline
from shardq.errors import NotFound

EXIT_DEAD_LETTER, EXIT_CANCELLED, EXIT_WAIT_TIMEOUT = 3, 4, 5
# --wait polls with backoff from 10 ms up to this (seconds): a finished task shows within ~1 s.
WAIT_POLL_MAX_S = 1.0


def add_insight_commands(sub: Any) -> None:
    common = [common_options()]
    p = sub.add_parser("history", parents=common, help="a task's timeline: claims, failures, retries...")
    p.add_argument("id", metavar="ID")
    p.set_defaults(handler=cmd_history)

    p = sub.add_parser("explain", parents=common, help="why a task is (not) running")
    p.add_argument("id", metavar="ID")
    p.set_defaults(handler=cmd_explain)

    p = sub.add_parser("result", parents=common,
                       help="print a task's result (raw; pretty JSON with --json)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--wait", nargs="?", const=-1.0, type=_seconds, metavar="SECONDS",
                   help="wait until the task finishes (at most SECONDS; without a number, as long "
                        "as it takes)")
    p.set_defaults(handler=cmd_result)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def cmd_history(args: argparse.Namespace, client: Any) -> int:
    found = client.history(args.id)
    if args.json:
        print_json(found)
        return 0
    print(f"task {found['id']} ({found['type']}): {found['status']}")
    for line in timeline(found["history"]):
        print(f"  {line}")
    return 0


def cmd_explain(args: argparse.Namespace, client: Any) -> int:
    found = client.explain(args.id)
    if args.json:
        print_json(found)
        return 0
    print(f"task {found['id']} ({found['type']}, {found['status']}, shard {found['shard']}): "
          f"{found['message']}")
    return 0


def cmd_result(args: argparse.Namespace, client: Any) -> int:
    try:
        if args.wait is None:
            task = client.status(args.id, with_result=True)
            if task is None:
                raise NotFound(f"no task {args.id}")
            if task.status == "dead_letter":
                raise TaskFailed(task)
            if task.status == "cancelled":
                raise TaskCancelled(task)
            if task.status != "completed":
                raise CliError(f"task {args.id} is {task.status}: no result yet (--wait waits for it)")
            result = task.result or b""
        else:
            result = client.wait(args.id, timeout=None if args.wait < 0 else args.wait,
                                 poll=WAIT_POLL_MAX_S)
    except TaskFailed as exc:
        t = exc.task
        raise CliError(f"task {t.id} is dead_letter after {t.attempt} attempt(s): {t.error}",
                       EXIT_DEAD_LETTER) from None
    except TaskCancelled as exc:
        raise CliError(f"task {exc.task.id} was cancelled: it has no result", EXIT_CANCELLED) from None
    except WaitTimeout as exc:
        raise CliError(str(exc), EXIT_WAIT_TIMEOUT) from None
    if args.json:
        try:
            value = orjson.loads(result)
        except orjson.JSONDecodeError:
            raise CliError(f"the result of {args.id} is not JSON ({len(result)} bytes); without "
                           "--json it is printed as it is") from None
        print_json(value)
        return 0
    sys.stdout.buffer.write(result)
    if result and sys.stdout.isatty() and not result.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    return 0
