"""The scenarios of `shardq bench`, one `run_*` function each (described in the package docstring).

Each builds its clients, drives them against its target server, and returns the result dict (or,
for group-commit, a list of them) that `--json` prints as it is.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from shardq.bench.clients import (
    Control,
    LatencySink,
    batched_consumer,
    batched_producer,
    single_consumer,
    single_producer,
)
from shardq.bench.driver import drive, percentiles, server_metrics, split
from shardq.bench.options import RECOVERY_BATCH, Options
from shardq.bench.target import SERVER_START_TIMEOUT_S, ServerMeter, own_server, target_server
from shardq.client.connection import Connection
from shardq.protocol.frames import MsgType
from shardq.testing import ServerProcess

GROUP_COMMIT_PRODUCERS = (1, 8, 64)
FLOOD_DELAY_MS = 1000
STATS_SETTLE_S = 5.0  # GET_STATS figures may be up to 1 s old
RECOVERED_RE = re.compile(r"\brecovered\b.*\bseconds=([0-9.]+)")


def run_lifecycle(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("lifecycle")
    with target_server(opts, tasks) as target:
        name = (f"lifecycle_b{opts.batch}_p{opts.payload_bytes}B_sync-{target.sync}"
                f"_shards{target.shards}")
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        latencies = LatencySink.create(ctx, -(-tasks // opts.batch) + opts.producers)
        clients = [(batched_producer, (target.url, ctl, share, opts.batch, opts.payload_bytes,
                                        opts.inflight, False, 0, None, latencies))
                   for share in split(tasks, opts.producers)]
        clients += [(batched_consumer, (target.url, ctl, f"bench-{i}", opts.batch))
                    for i in range(opts.consumers)]
        stats = drive(ctx, name, ctl, clients, target.meter)
        return {"scenario": name, "kind": "lifecycle", "tasks": tasks, "completed": stats.done,
                "completed_per_s": round(stats.done / stats.elapsed_s, 1),
                "latency_of": "SUBMIT batch round trip", **percentiles(latencies.sorted()),
                "batch": opts.batch, "payload_bytes": opts.payload_bytes,
                "producers": opts.producers, "consumers": opts.consumers,
                "inflight": opts.inflight, **server_metrics(stats, target.meter)}


def run_unpipelined(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("unpipelined")
    with target_server(opts, tasks) as target:
        name = (f"unpipelined_c{opts.clients}_p{opts.payload_bytes}B_sync-{target.sync}"
                f"_shards{target.shards}")
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        clients = [(single_producer, (target.url, ctl, share, opts.payload_bytes, False))
                   for share in split(tasks, opts.clients)]
        clients += [(single_consumer, (target.url, ctl, f"bench-{i}"))
                    for i in range(opts.clients)]
        stats = drive(ctx, name, ctl, clients, target.meter)
        return {"scenario": name, "kind": "unpipelined", "tasks": tasks, "completed": stats.done,
                "completed_per_s": round(stats.done / stats.elapsed_s, 1),
                "clients": opts.clients, "payload_bytes": opts.payload_bytes,
                **server_metrics(stats, target.meter)}


def run_submit_latency(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("submit-latency")
    with target_server(opts, tasks) as target:
        name = f"submit-latency_p{opts.payload_bytes}B_sync-{target.sync}"
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        latencies = ctx.RawArray("q", tasks)
        stats = drive(ctx, name, ctl, [(single_producer, (target.url, ctl, tasks,
                                                            opts.payload_bytes, True, latencies))],
                       target.meter)
        samples = sorted(latencies[:stats.done])
        return {"scenario": name, "kind": "submit-latency", "tasks": tasks,
                "submitted": stats.done, "submits_per_s": round(stats.done / stats.elapsed_s, 1),
                **percentiles(samples), "payload_bytes": opts.payload_bytes,
                **server_metrics(stats, target.meter)}


def _recovered_seconds(srv: ServerProcess, wait_s: float = 2.0) -> float | None:
    """The server's own `recovered ... seconds=X` (logged before READY; stderr may lag)."""
    deadline = time.monotonic() + wait_s
    while True:
        for line in list(srv.stderr_lines):
            match = RECOVERED_RE.search(line)
            if match:
                return float(match.group(1))
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _pending(srv: ServerProcess, expected: int) -> int:
    """GET_STATS totals.pending, re-asked for a few seconds until it shows `expected`."""
    deadline = time.monotonic() + STATS_SETTLE_S
    with srv.connect() as conn:
        while True:
            pending = int(conn.call(MsgType.GET_STATS, {}).header["totals"]["pending"])
            if pending == expected or time.monotonic() >= deadline:
                return pending
            time.sleep(0.2)


def run_recovery(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("recovery")
    name = f"recovery_{tasks}"
    errors: list[str] = []
    limit = max(SERVER_START_TIMEOUT_S, opts.duration_limit)
    with own_server(opts, tasks) as srv:
        fill_meter = ServerMeter(srv.pid)
        empty_rss = fill_meter.rss()
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        clients = [(batched_producer, (srv.url, ctl, share, RECOVERY_BATCH, opts.payload_bytes,
                                        opts.inflight, True))
                   for share in split(tasks, opts.producers)]
        fill = drive(ctx, f"{name} fill", ctl, clients, fill_meter)
        filled_rss = fill_meter.rss()
        if fill.done != tasks:
            errors.append(f"filled {fill.done} of {tasks} tasks within the duration limit")

        t0 = time.monotonic()
        exit_code = srv.stop(timeout=limit)
        shutdown_s = time.monotonic() - t0
        if exit_code != 0:
            errors.append(f"SIGTERM: the server exited with {exit_code}, not 0")

        t0 = time.monotonic()
        srv.start(timeout=limit, port=0)
        ready_s = time.monotonic() - t0
        restarted_meter = ServerMeter(srv.pid)
        recovered_s = _recovered_seconds(srv)
        if recovered_s is None:
            errors.append("no `recovered ... seconds=X` line in the server's log")
        pending = _pending(srv, fill.done)
        if pending != fill.done:
            errors.append(f"GET_STATS after restart: pending={pending}, expected {fill.done}")
        restarted_rss = restarted_meter.rss()
        per_task = (None if empty_rss is None or restarted_rss is None or not fill.done
                    else round((restarted_rss - empty_rss) / fill.done, 1))
        return {"scenario": name, "kind": "recovery", "tasks": tasks, "submitted": fill.done,
                "payload_bytes": opts.payload_bytes, "producers": opts.producers,
                "fill_elapsed_s": round(fill.elapsed_s, 4),
                "fill_per_s": round(fill.done / fill.elapsed_s, 1),
                "fill_server_cpu_us_per_task": (None if fill.cpu_s is None or not fill.done
                                                else round(fill.cpu_s * 1e6 / fill.done, 2)),
                "empty_rss_bytes": empty_rss, "filled_rss_bytes": filled_rss,
                "restarted_rss_bytes": restarted_rss, "rss_bytes_per_queued_task": per_task,
                "shutdown_s": round(shutdown_s, 3), "sigterm_exit_code": exit_code,
                "restart_to_ready_s": round(ready_s, 3), "recovery_s": recovered_s,
                "pending_after_restart": pending,
                "peak_server_rss_bytes": max(filter(None, (fill_meter.peak_rss, filled_rss,
                                                           restarted_rss)), default=None),
                "timed_out": fill.timed_out, "errors": errors}


def run_group_commit(ctx: Any, opts: Options) -> list[dict[str, Any]]:
    tasks = opts.tasks_for("group-commit")
    sync = opts.sync or "always"
    out = []
    for producers in GROUP_COMMIT_PRODUCERS:
        run_opts = Options(**{**{f: getattr(opts, f) for f in Options.__dataclass_fields__}, "sync": sync})
        with target_server(run_opts, tasks) as target:
            name = f"group-commit_c{producers}_p{opts.payload_bytes}B_sync-{target.sync}"
            ctl = Control.create(ctx, tasks, opts.duration_limit)
            shares = split(tasks, producers)
            arrays = [ctx.RawArray("q", share) for share in shares]
            clients = [(single_producer, (target.url, ctl, share, opts.payload_bytes, True, arr))
                       for share, arr in zip(shares, arrays)]
            stats = drive(ctx, name, ctl, clients, target.meter)
            samples = sorted(v for arr in arrays for v in arr[:] if v)
            out.append({"scenario": name, "kind": "group-commit", "tasks": tasks, "producers": producers,
                        "submitted": stats.done, "submits_per_s": round(stats.done / stats.elapsed_s, 1),
                        **percentiles(samples),
                        "payload_bytes": opts.payload_bytes, **server_metrics(stats, target.meter)})
    return out


def run_delayed_flood(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("delayed-flood")
    with target_server(opts, tasks) as target:
        name = (f"delayed-flood_b{opts.batch}_d{FLOOD_DELAY_MS}ms_sync-{target.sync}"
                f"_shards{target.shards}")
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        latencies = LatencySink.create(ctx, -(-tasks // opts.batch) + opts.producers)
        clients = [(batched_producer, (target.url, ctl, share, opts.batch, opts.payload_bytes,
                                        opts.inflight, False, FLOOD_DELAY_MS, None, latencies))
                   for share in split(tasks, opts.producers)]
        clients += [(batched_consumer, (target.url, ctl, f"bench-{i}", opts.batch))
                    for i in range(opts.consumers)]
        stats = drive(ctx, name, ctl, clients, target.meter)
        return {"scenario": name, "kind": "delayed-flood", "tasks": tasks, "completed": stats.done,
                "completed_per_s": round(stats.done / stats.elapsed_s, 1), "delay_ms": FLOOD_DELAY_MS,
                "latency_of": "SUBMIT batch round trip", **percentiles(latencies.sorted()),
                "batch": opts.batch, **server_metrics(stats, target.meter)}


def _forwarded(url: str) -> int:
    with Connection.from_url(url) as conn:
        return sum(int(r.get("forwarded") or 0) for r in conn.call(MsgType.GET_STATS, {}).header["shards"])


def run_cross_shard(ctx: Any, opts: Options) -> dict[str, Any]:
    tasks = opts.tasks_for("cross-shard")
    run_opts = Options(**{**{f: getattr(opts, f) for f in Options.__dataclass_fields__}, "shards": 2})
    with target_server(run_opts, tasks) as target:
        if target.shards < 2:
            raise RuntimeError("cross-shard needs a server with at least 2 shards")
        name = f"cross-shard_b{opts.batch}_p{opts.payload_bytes}B_sync-{target.sync}"
        ctl = Control.create(ctx, tasks, opts.duration_limit)
        latencies = LatencySink.create(ctx, -(-tasks // opts.batch) + opts.producers)
        clients = [(batched_producer, (target.url, ctl, share, opts.batch, opts.payload_bytes,
                                        opts.inflight, False, 0, 0, latencies))
                   for share in split(tasks, opts.producers)]
        clients += [(batched_consumer, (target.url, ctl, f"bench-{i}", opts.batch, 1))
                    for i in range(opts.consumers)]
        before = _forwarded(target.url)
        stats = drive(ctx, name, ctl, clients, target.meter)
        hops = _forwarded(target.url) - before
        return {"scenario": name, "kind": "cross-shard", "tasks": tasks, "completed": stats.done,
                "completed_per_s": round(stats.done / stats.elapsed_s, 1), "batch": opts.batch,
                "latency_of": "SUBMIT batch round trip", **percentiles(latencies.sorted()),
                "hops": hops, "hops_per_task": round(hops / max(1, stats.done), 4),
                **server_metrics(stats, target.meter)}


RUNNERS: dict[str, Callable[[Any, Options], Any]] = {
    "lifecycle": run_lifecycle, "unpipelined": run_unpipelined,
    "submit-latency": run_submit_latency, "group-commit": run_group_commit,
    "delayed-flood": run_delayed_flood, "cross-shard": run_cross_shard, "recovery": run_recovery,
}
