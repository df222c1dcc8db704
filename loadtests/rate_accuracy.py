"""How close a type's broker-wide ``rate`` holds: start a multi-shard server (or use one), set a
rate on a type, keep every shard supplied with its tasks, let worker threads on every shard claim
as fast as they can, and count the claims in a 10 s window (after the first second, when the
buckets start empty). Prints one JSON object.

    python loadtests/rate_accuracy.py [--shards 3] [--rate 200] [--burst B] [--seconds 10]
                                      [--workers 6] [--skew]

``--skew`` puts every task on one shard (workers still on every shard: they claim across
shards), to see the rate follow the demand.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid

from shardq.client.sync import Client, Job
from shardq.testing import ServerProcess


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--burst", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--skew", action="store_true")
    args = ap.parse_args()
    srv = ServerProcess(tempfile.mkdtemp(prefix="shardq-rate-"), ["--shards", str(args.shards)]).start()
    t = f"rated-{uuid.uuid4().hex[:8]}"
    need = int(args.rate * (args.seconds + 3) * 1.5) + 1000
    stamps: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    try:
        with Client(srv.url) as c:
            limits = {"rate": args.rate} if args.burst is None else {"rate": args.rate, "burst": args.burst}
            rec = c.set_limits(t, **limits)["control"]
            per = need if args.skew else need // args.shards
            targets = [0] if args.skew else range(args.shards)
            for k in targets:
                with Client(srv.url, shard=k) as pinned:
                    for start in range(0, per, 1000):
                        pinned.submit_many([Job(t, b"x") for _ in range(min(1000, per - start))])

        def work(i: int) -> None:
            with Client(srv.url, shard=i % args.shards) as w:
                while not stop.is_set():
                    got = w.claim(f"rw-{i}", max=50, wait=0.5, types=[t])
                    now = time.monotonic()
                    with lock:
                        stamps.extend([now] * len(got))
                    if got:
                        w.report(f"rw-{i}", [({"id": x.id, "attempt": x.attempt, "status": "completed"}, b"")
                                             for x in got])

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(args.workers)]
        t0 = time.monotonic()
        for th in threads:
            th.start()
        time.sleep(args.seconds + 1.5)
        stop.set()
        for th in threads:
            th.join(5)
        lo, hi = t0 + 1.0, t0 + 1.0 + args.seconds
        window = sum(1 for s in stamps if lo <= s < hi)
        expected = args.rate * args.seconds
        print(json.dumps({"shards": args.shards, "rate": args.rate, "burst": rec["burst"],
                          "workers": args.workers, "skew": args.skew, "seconds": args.seconds,
                          "claimed_in_window": window, "expected": expected,
                          "error_percent": round((window / expected - 1) * 100, 2),
                          "claimed_first_second": sum(1 for s in stamps if t0 <= s < lo)}))
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
