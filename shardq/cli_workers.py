"""`shardq workers quiet ID` and `shardq workers stop ID` (extension worker_control).

``shardq workers`` itself (the list) is in cli_commands.py; cli.py adds these two as its
subcommands. The order is recorded by the broker at once and reaches the worker with its next
heartbeat (docs/cli.md)."""

from __future__ import annotations

import argparse
from typing import Any

from shardq.cli_commands import CliError, print_json
from shardq.client.control import NotSupported

_HOW = {"quiet": "it stops claiming and finishes what it holds",
        "stop": "it stops claiming, finishes what it holds (up to its shutdown timeout), and exits"}


def add_worker_control(workers: argparse.ArgumentParser, common: list[argparse.ArgumentParser]) -> None:
    """``quiet`` and ``stop`` under the ``workers`` parser (which alone still lists workers)."""
    sub = workers.add_subparsers(dest="workers_action", metavar="{quiet,stop}")
    for action in ("quiet", "stop"):
        p = sub.add_parser(action, parents=common, help=f"{action} a worker: {_HOW[action]}")
        p.add_argument("worker_id", metavar="ID", help="a worker id, as `shardq workers` lists it")
        p.set_defaults(handler=cmd_worker_control, action=action)


def cmd_worker_control(args: argparse.Namespace, client: Any) -> int:
    try:
        answer = (client.quiet_worker if args.action == "quiet" else client.stop_worker)(args.worker_id)
    except NotSupported as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print_json(answer)
    else:
        print(f"{answer['command']} ordered for worker {answer['worker_id']} (now {answer['state']}): "
              f"{_HOW[answer['command']]}, from its next heartbeat")
    return 0
