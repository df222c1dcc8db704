"""How long each dashboard page takes the server with many tasks on one shard.

    PYTHONPATH=. python loadtests/dashboard_bench.py --tasks 1000000 --rounds 20

Starts a 1-shard `shardq serve` on a temp data dir, fills it with ``--tasks`` pending tasks (in
batches of 1,000; a few hundred of them dead letters of a handful of causes), then asks for every
page ``--rounds`` times over one keep-alive connection on loopback and prints the median and the
slowest time per page. On loopback with one request at a time, that time is the server's time to
build the page plus well under a millisecond of transport. Bounded: the fill stops after
``--fill-seconds`` whatever the count reached (the count reached is printed).
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shardq.client.models import Job  # noqa: E402
from shardq.client.sync import Client  # noqa: E402
from shardq.testing import ServerProcess  # noqa: E402

ERRORS = ("TimeoutError: timeout after {n}.2 s on 10.0.0.{n}", "KeyError: 'user_{n}'",
          "ConnectionRefusedError: [Errno 111] connect to 10.1.{n}.3:5432")


def fill(srv: ServerProcess, tasks: int, seconds: float) -> int:
    done = 0
    deadline = time.monotonic() + seconds
    with Client(srv.url, timeout=120) as c:
        while done < tasks and time.monotonic() < deadline:
            n = min(1000, tasks - done)
            c.submit_many([Job(f"bench.type{(done + i) % 20}", b"x" * 100) for i in range(n)])
            done += n
        dead = [c.submit("bench.dead", max_retries=0) for _ in range(300)]
        got = []
        while len(got) < len(dead):
            got += c.claim("bench-w", max=100, types=["bench.dead"], wait=1)
        for i, t in enumerate(got):
            c.fail("bench-w", t, ERRORS[i % 3].format(n=i % 50), retry=False)
        return done + len(dead)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--fill-seconds", type=float, default=600.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dash-bench-") as tmp:
        srv = ServerProcess(str(Path(tmp) / "data"), ["--shards", "1", "--queue-depth-threshold", str(args.tasks + 10_000)])
        srv.start()
        try:
            t0 = time.monotonic()
            stored = fill(srv, args.tasks, args.fill_seconds)
            print(f"stored {stored:,} tasks on one shard in {time.monotonic() - t0:.0f} s")
            with Client(srv.url) as c:
                some = c.submit("bench.type1")
            pages = ["/", "/types", "/tasks?status=pending", "/tasks?status=pending&type=bench.type7",
                     "/tasks?id=" + some[:8], "/tasks?error=timeout&status=dead_letter", f"/tasks/{some}",
                     "/dlq", "/workers", "/schedules", "/shards"]
            conn = http.client.HTTPConnection(srv.host, srv.http_port, timeout=60)
            print(f"{'page':45} {'median ms':>10} {'max ms':>8}")
            for page in pages:
                times = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    conn.request("GET", page)
                    resp = conn.getresponse()
                    resp.read()
                    times.append((time.perf_counter() - t) * 1000)
                    assert resp.status == 200, (page, resp.status)
                print(f"{page:45} {statistics.median(times):10.1f} {max(times):8.1f}")
        finally:
            srv.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
