"""What CLAIM ``dependency_results`` costs: claim latency of tasks with dependencies on every shard,
with the flag and without, on a real multi-shard server (docs/benchmarks.md, "Dependency results").

    PYTHONPATH=$PWD python loadtests/dep_results_bench.py --shards 3 --tasks 300 --result-bytes 1024

Each child task depends on one parent per shard (each parent's result ``--result-bytes`` long);
the children are claimed one at a time from one shard's connection, alternately with and without
the flag. Prints one JSON line: median and p90 claim latency (ms) of each, and bytes carried.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import shardq
from shardq.client.models import Job
from shardq.task import id_to_str, new_ids
from shardq.testing import ServerProcess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--result-bytes", type=int, default=1024)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        srv = ServerProcess(d + "/data", ["--shards", str(args.shards)]).start()
        try:
            print(json.dumps(measure(srv, args)))
        finally:
            srv.kill()


def measure(srv: ServerProcess, args: argparse.Namespace) -> dict[str, object]:
    n = args.shards
    with shardq.Client(srv.url) as c:
        parents = [id_to_str(new_ids(1, s, n)[0]) for s in range(n)]
        c.submit_many([Job("parent", b"", id=p) for p in parents])
        for _ in parents:
            (t,) = c.claim("bench", 1, wait=5, types=["parent"])
            c.complete("bench", t, b"r" * args.result_bytes)
        for at in range(0, args.tasks, 500):
            c.submit_many([Job("child", b"{}", depends_on=parents)
                           for _ in range(min(500, args.tasks - at))])
    lat: dict[bool, list[float]] = {False: [], True: []}
    carried = 0
    with shardq.Client(srv.url, shard=0, spread=False) as c:
        flag = False
        deadline = time.monotonic() + 5
        while len(lat[False]) + len(lat[True]) < args.tasks and time.monotonic() < deadline + 60:
            t0 = time.perf_counter()
            got = c.claim("bench", 1, wait=1, types=["child"], dependency_results=flag)
            took = (time.perf_counter() - t0) * 1000
            if not got:
                continue
            lat[flag].append(took)
            if flag:
                carried += sum(len(v) for v in (got[0].dependency_results or {}).values())
            c.complete("bench", got[0], b"")
            flag = not flag

    def summary(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {"n": len(xs), "p50_ms": round(statistics.median(xs), 3),
                "p90_ms": round(xs[int(len(xs) * 0.9)], 3)}

    return {"shards": n, "result_bytes": args.result_bytes, "without": summary(lat[False]),
            "with": summary(lat[True]), "bytes_carried_per_claim": carried // max(1, len(lat[True]))}


if __name__ == "__main__":
    main()
