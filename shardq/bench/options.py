"""`shardq bench` options: the scenarios there are, their default sizes, and the parsed command line.

Rule: everything the command line can set is named and checked here, once; the other modules read
an `Options`, never an `argparse.Namespace`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from shardq.client.connection import parse_url
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD, frame_size

SCENARIOS = ("lifecycle", "unpipelined", "submit-latency", "group-commit", "delayed-flood",
             "cross-shard", "recovery")
DEFAULT_SCENARIOS = ("lifecycle", "unpipelined", "submit-latency")
DEFAULT_TASKS = {"lifecycle": 200_000, "unpipelined": 30_000, "submit-latency": 5_000,
                 "group-commit": 20_000, "delayed-flood": 100_000, "cross-shard": 100_000,
                 "recovery": 1_000_000}
TASK_TYPE = "bench"
RECOVERY_BATCH = 1000
MAX_CLAIM = 1000  # the protocol's limit on CLAIM `max`


def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"{value} is out of range (must be {bound})")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return value



def add_options(parser: argparse.ArgumentParser) -> None:
    """Every option of `shardq bench` (the package's `add_arguments` adds the description)."""
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help=f"one of {', '.join(SCENARIOS)}, or all; repeatable or comma list "
                             f"(default: {','.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--tasks", type=_int_at_least(1), default=None, metavar="N",
                        help="tasks per scenario (default: " + ", ".join(
                            f"{k} {v}" for k, v in DEFAULT_TASKS.items()) + ")")
    parser.add_argument("--payload-bytes", type=_int_at_least(0, MAX_PAYLOAD), default=100,
                        metavar="B", help="payload size of each task (default 100)")
    parser.add_argument("--batch", type=_int_at_least(1, MAX_CLAIM), default=100, metavar="N",
                        help="tasks per SUBMIT and CLAIM max in lifecycle (default 100)")
    parser.add_argument("--producers", type=_int_at_least(1), default=1, metavar="N",
                        help="producer processes in lifecycle and the recovery fill (default 1)")
    parser.add_argument("--consumers", type=_int_at_least(1), default=1, metavar="N",
                        help="consumer processes in lifecycle (default 1)")
    parser.add_argument("--clients", type=_int_at_least(1), default=4, metavar="N",
                        help="producer processes and consumer processes in unpipelined (default 4)")
    parser.add_argument("--inflight", type=_int_at_least(1), default=4, metavar="N",
                        help="outstanding SUBMITs per batched producer (default 4)")
    parser.add_argument("--shards", type=_int_at_least(1), default=1, metavar="N",
                        help="shards of the server the benchmark starts (default 1)")
    parser.add_argument("--sync", choices=("always", "interval", "none"), default=None,
                        help="sync mode of the server the benchmark starts (default interval)")
    parser.add_argument("--server", metavar="URL", default=None,
                        help="use this running server (shardq://host:port) instead of starting one")
    parser.add_argument("--server-pid", type=_int_at_least(1), default=None, metavar="PID",
                        help="with --server: measure this process (and its children)")
    parser.add_argument("--duration-limit", type=_positive_float, default=120.0, metavar="S",
                        help="stop each scenario after this many seconds (default 120)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


@dataclass(frozen=True, slots=True)
class Options:
    scenarios: tuple[str, ...]
    tasks: int | None
    payload_bytes: int
    batch: int
    producers: int
    consumers: int
    clients: int
    inflight: int
    shards: int
    sync: str | None
    server: str | None
    server_pid: int | None
    duration_limit: float
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        opts = cls(scenarios=_parse_scenarios(args.scenario), tasks=args.tasks,
                   payload_bytes=args.payload_bytes, batch=args.batch, producers=args.producers,
                   consumers=args.consumers, clients=args.clients, inflight=args.inflight,
                   shards=args.shards, sync=args.sync, server=args.server,
                   server_pid=args.server_pid, duration_limit=args.duration_limit, json=args.json)
        if opts.server is not None:
            parse_url(opts.server)
        elif opts.server_pid is not None:
            raise ValueError("--server-pid needs --server")
        for scenario, batch in (("lifecycle", opts.batch), ("recovery", RECOVERY_BATCH)):
            if scenario in opts.scenarios:
                size = frame_size({"rid": 2**63 - 1, "tasks": [
                    {"type": TASK_TYPE, "payload_len": opts.payload_bytes}] * batch},
                    batch * opts.payload_bytes)
                if size > MAX_FRAME:
                    raise ValueError(f"{scenario}: a batch of {batch} tasks of {opts.payload_bytes} "
                                     f"bytes needs a {size}-byte frame (limit {MAX_FRAME})")
        return opts

    def tasks_for(self, scenario: str) -> int:
        return self.tasks if self.tasks is not None else DEFAULT_TASKS[scenario]


def _parse_scenarios(values: list[str] | None) -> tuple[str, ...]:
    names = [n.strip() for v in (values or [",".join(DEFAULT_SCENARIOS)]) for n in v.split(",")]
    out: list[str] = []
    for name in names:
        if name == "all":
            wanted: tuple[str, ...] = SCENARIOS
        elif name in SCENARIOS:
            wanted = (name,)
        else:
            raise ValueError(f"unknown scenario {name!r} (choose from {', '.join(SCENARIOS)}, all)")
        out.extend(w for w in wanted if w not in out)
    return tuple(out)
