"""``shardq submit``'s task options: --ttl / --expires-at (expiry) and --unique-key /
--unique-window (unique tasks), docs/cli.md. Registered on the submit parser by cli_commands.py."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_submit_options(p: argparse.ArgumentParser, iso_time: Callable[[str], Any],
                       seconds: Callable[[str], Any]) -> None:
    g = p.add_argument_group("task options")
    expiry = g.add_mutually_exclusive_group()
    expiry.add_argument("--ttl", type=seconds, metavar="S",
                        help="not started within S seconds of arriving, the task is not run "
                             "(it ends dead_letter, error 'expired')")
    expiry.add_argument("--expires-at", type=iso_time, metavar="TIME",
                        help="not started by this ISO time, the task is not run")
    g.add_argument("--unique-key", metavar="KEY",
                   help="while a task of this type holds KEY, submitting another returns its id")
    g.add_argument("--unique-window", type=seconds, metavar="S",
                   help="with --unique-key: the key stays held S seconds after the task finished")


def submit_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Job`` fields of the flags given (ValueError for a flag that needs another)."""
    if args.unique_window is not None and args.unique_key is None:
        raise ValueError("--unique-window needs --unique-key")
    if args.ttl is not None and args.ttl <= 0:
        raise ValueError("--ttl must be > 0 seconds")
    out: dict[str, Any] = {}
    for name in ("ttl", "expires_at", "unique_key", "unique_window"):
        value = getattr(args, name)
        if value is not None:
            out[name] = value
    return out
