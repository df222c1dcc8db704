"""A short headless Locust run against a real `shardq serve`, as CI runs it.

    python loadtests/ci_locust.py --seconds 15 --users 12

Starts a 2-shard server on a free port with a temp data dir, runs the three users of
loadtests/locustfile.py headless, and exits 1 if any request failed, if a request type saw no
traffic, if no task was completed (zero throughput), or if the tasks are not spread over the
shards (each shard within ±20 % of the mean: the bundled client spreads its SUBMITs). Prints
Locust's summary, the tasks per shard and the verdict.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile

from shardq import Client
from shardq.testing import ServerProcess

HERE = os.path.dirname(os.path.abspath(__file__))
REQUIRED = ("SUBMIT", "CLAIM", "RESULT", "QUERY_STATUS", "GET_STATS")
SPREAD_TOLERANCE = 0.20  # each shard's tasks within this share of the mean


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--users", type=int, default=12)
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shardq-locust-") as tmp:
        server = ServerProcess(os.path.join(tmp, "data"), ["--shards", str(args.shards)]).start()
        try:
            prefix = os.path.join(tmp, "locust")
            cmd = [sys.executable, "-m", "locust", "-f", os.path.join(HERE, "locustfile.py"), "--headless",
                   "-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s",
                   "--host", server.url, "--csv", prefix, "--only-summary", "--stop-timeout", "5",
                   "--loglevel", "WARNING"]
            run = subprocess.run(cmd, timeout=args.seconds + 120)
            with open(prefix + "_stats.csv") as f:
                rows = list(csv.DictReader(f))
            with Client(server.url) as client:
                st = client.stats()
                completed = st["totals"]["completed"]
                per_shard = [sum(int(r.get(k) or 0) for k in ("pending", "in_progress", "completed",
                                                              "failed", "dead_letter", "cancelled"))
                             for r in st["shards"]]
        finally:
            server.stop()
    by_type: dict[str, tuple[int, int]] = {}
    for row in rows:
        if row["Type"] and row["Name"] != "Aggregated":
            n, failed = by_type.get(row["Type"], (0, 0))
            by_type[row["Type"]] = (n + int(row["Request Count"]), failed + int(row["Failure Count"]))
    problems = [f"{t}: {failed} of {n} requests failed" for t, (n, failed) in by_type.items() if failed]
    problems += [f"{t}: no requests" for t in REQUIRED if by_type.get(t, (0, 0))[0] == 0]
    if completed == 0:
        problems.append("no task was completed")
    mean = sum(per_shard) / max(1, len(per_shard))
    worst = max((abs(n - mean) / mean for n in per_shard), default=0.0) if mean else 0.0
    if len(per_shard) > 1 and worst > SPREAD_TOLERANCE:
        problems.append(f"tasks per shard {per_shard}: {worst:.0%} off the mean (at most "
                        f"{SPREAD_TOLERANCE:.0%})")
    if run.returncode not in (0, 1) and not problems:  # locust exits 1 when requests failed
        problems.append(f"locust exited with {run.returncode}")
    summary = ", ".join(f"{t} {n}" for t, (n, _) in sorted(by_type.items()))
    print(f"locust: {summary}; completed tasks {completed}; tasks per shard {per_shard} "
          f"({worst:.1%} off the mean at worst)")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
