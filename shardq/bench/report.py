"""What `shardq bench` prints: one JSON object (``--json``), or a table and a line per check."""

from __future__ import annotations

import os
import sys
from typing import Any

import orjson

from shardq import __version__
from shardq.bench.options import Options


def _rate(result: dict[str, Any]) -> float | None:
    return result.get("completed_per_s", result.get("submits_per_s", result.get("fill_per_s")))


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    return f"{value:,}{unit}"


def _cpu10k(r: dict[str, Any]) -> str:
    per_task = r.get("server_cpu_us_per_task", r.get("fill_server_cpu_us_per_task"))
    return "-" if per_task is None else f"{per_task * 10_000 / 1e6:,.3f}"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def format_table(results: list[dict[str, Any]]) -> str:
    head = ("scenario", "tasks/s", "p50", "p99", "p999", "server CPU s/10k tasks", "peak RSS")
    rows = [head] + [(r["scenario"] + (" (timed out)" if r.get("timed_out") else ""),
                      _fmt(_rate(r)), _fmt(r.get("p50_us"), " us"), _fmt(r.get("p99_us"), " us"),
                      _fmt(r.get("p999_us"), " us"), _cpu10k(r),
                      _mib(r.get("peak_server_rss_bytes")))
                     for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for r in results:
        if r["kind"] == "cross-shard":
            lines.append(f"{r['scenario']}: {r['hops']:,} cross-shard hops, {r['hops_per_task']} per task")
        if r["kind"] == "submit-latency":
            lines.append(f"{r['scenario']}: p999 {_fmt(r['p999_us'], ' us')}, "
                         f"max {_fmt(r['max_us'], ' us')}")
        if r["kind"] == "recovery":
            lines.append(
                f"{r['scenario']}: filled at {_fmt(r['fill_per_s'])} tasks/s; SIGTERM exit "
                f"{r['sigterm_exit_code']} in {r['shutdown_s']} s; restart to READY "
                f"{r['restart_to_ready_s']} s (recovery {r['recovery_s']} s in-process); "
                f"RSS empty {_mib(r['empty_rss_bytes'])}, filled {_mib(r['filled_rss_bytes'])}, "
                f"restarted {_mib(r['restarted_rss_bytes'])} = "
                f"{_fmt(r['rss_bytes_per_queued_task'])} B/queued task; "
                f"pending after restart {r['pending_after_restart']:,}")
        for err in r.get("errors") or ():
            lines.append(f"{r['scenario']}: CHECK FAILED: {err}")
    return "\n".join(lines)


def report(opts: Options, results: list[dict[str, Any]]) -> None:
    if opts.json:
        doc = {"benchmark": "shardq", "version": __version__, "python": sys.version.split()[0],
               "cpus": os.cpu_count(), "server": opts.server or "own", "results": results}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif results:
        print(format_table(results))
    sys.stdout.flush()
