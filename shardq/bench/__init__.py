"""`shardq bench`: drive the real task lifecycle against a real server, and measure it.

Every client runs in its own process (multiprocessing, "spawn"), so the numbers are those of
the server, not of one Python interpreter juggling producers and consumers. All clients connect
first; the clock starts when every one of them is connected.

Scenarios (``--scenario``, repeatable or comma-separated; ``all`` runs every one; default
``lifecycle,unpipelined,submit-latency``). ``--tasks`` overrides each default count.

``lifecycle`` (200,000 tasks) -- name ``lifecycle_b{batch}_p{payload}B_sync-{sync}_shards{shards}``
    ``--producers`` processes SUBMIT ``--batch`` tasks of ``--payload-bytes`` each, keeping up
    to ``--inflight`` requests outstanding; ``--consumers`` processes CLAIM up to ``--batch``
    tasks (wait 500 ms) and complete them with one RESULT, sent back to back with the next CLAIM.
    Its p50/p99/p999 (and those of delayed-flood and cross-shard) are of the batched SUBMIT's
    round trip under that load: send -> ACK, which the server sends once the batch is committed.
``unpipelined`` (30,000) -- name ``unpipelined_c{clients}_p{payload}B_sync-{sync}_shards{shards}``
    ``--clients`` producers submit one task per request and wait for its ACK; ``--clients``
    consumers CLAIM one task (wait 200 ms), complete it, and wait for each ACK.
``submit-latency`` (5,000) -- name ``submit-latency_p{payload}B_sync-{sync}``
    One client submits one task per request and waits for each ACK; nothing else runs.
    Reports p50/p99/p999/max round trip in microseconds.
``group-commit`` (20,000 per run) -- names ``group-commit_c{1,8,64}_p{payload}B_sync-{sync}``
    One run each with 1, 8 and 64 concurrent producers submitting one task per request
    (``--sync`` defaults to ``always`` here: every ACK waits for an fsync, which group commit
    shares between the requests of a loop turn). Reports submits/s and p50/p99/p999 latency.
``delayed-flood`` (100,000) -- name ``delayed-flood_b{batch}_d1000ms_sync-{sync}_shards{shards}``
    The lifecycle with every task submitted with ``delay_ms`` 1000: the schedule heap takes
    the flood and releases it as it falls due; the consumers drain it.
``cross-shard`` (100,000) -- name ``cross-shard_b{batch}_p{payload}B_sync-{sync}``
    Two shards (forced); the producers ask for shard 0 and the consumers for shard 1 (HELLO
    hint), so every CLAIM is served by leasing from the other shard and every RESULT is
    forwarded: the cost of a cross-shard hop. Reports ``hops_per_task`` from GET_STATS.
``recovery`` (1,000,000) -- name ``recovery_{tasks}``
    Always on a fresh server of its own (it has to restart it, so ``--server`` does not apply):
    RSS right after the empty start; fill with N pending tasks (batches of 1000, pipelined);
    SIGTERM (the exit code must be 0); restart on the same data dir and time spawn -> READY
    (and read the server's own ``recovered ... seconds=X`` log line); GET_STATS must show
    ``pending == N``. Reports ``rss_bytes_per_queued_task`` = (RSS after restart - empty RSS) / N.

Server: by default each scenario starts its own ``shardq serve`` (``--shards``, ``--sync``) in
a temporary data dir that is removed afterwards. ``--server shardq://host:port`` uses a running,
dedicated server instead (the benchmark claims and completes whatever is ready there); its CPU
and RSS are measured only when ``--server-pid`` is given.

Measured: server CPU is user+system time of the server process and all its children, sampled
just before the clock starts and just after the last completion; peak RSS is the largest sum of
their RSS seen while sampling every 100 ms. Every loop is bounded by its count and by
``--duration-limit`` seconds: at the limit the scenario stops and reports what was done
(``timed_out``: true).

The package: options.py (the command line), target.py (the server and its meter), clients.py (the
client processes), driver.py (the parent's run loop and its numbers), scenarios.py (one ``run_*``
each), report.py (the JSON and the table); this file wires them into the `shardq bench` command.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import subprocess
import sys
from typing import Any

import psutil

from shardq.bench.options import Options, add_options
from shardq.bench.report import format_table, report
from shardq.bench.scenarios import RUNNERS
from shardq.bench.target import ServerMeter
from shardq.errors import ShardqError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n", 1)[0] if __doc__ else None
    add_options(parser)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    try:
        opts = Options.from_args(args)
    except ValueError as exc:
        print(f"shardq bench: {exc}", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so the servers (in their own sessions) and clients are ended.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(opts)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(opts: Options) -> int:
    ctx = multiprocessing.get_context("spawn")
    results: list[dict[str, Any]] = []
    status = 0
    for scenario in opts.scenarios:
        try:
            outcome = RUNNERS[scenario](ctx, opts)
            results.extend(outcome if isinstance(outcome, list) else [outcome])
        except KeyboardInterrupt:
            print(f"shardq bench: {scenario}: interrupted", file=sys.stderr)
            status = 130
            break
        except (ShardqError, RuntimeError, OSError, psutil.Error, subprocess.SubprocessError) as exc:
            print(f"shardq bench: {scenario}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
            break
    report(opts, results)
    if status == 0 and any(r.get("errors") for r in results):
        status = 1
    return status


__all__ = ["Options", "ServerMeter", "add_arguments", "format_table", "run"]
