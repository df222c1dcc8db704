"""The store's share of a task lifecycle, in process: Engine + PartitionedStore (1 shard, RocksDB).

Runs N lifecycles (SUBMIT a batch, commit; CLAIM it, commit; RESULT completed, commit), batch B,
and prints RocksDB mutations per lifecycle, µs per lifecycle of the whole in-process path, and
µs of it spent in ``Store.commit`` (RocksDB's write). No sockets, no server: it isolates the
layout. To compare two trees, run each with its own PYTHONPATH, interleaved:

    for i in 1 2 3; do
      PYTHONPATH=/tmp/layout-base python loadtests/store_bench.py --label base
      PYTHONPATH=$PWD python loadtests/store_bench.py --label new
    done
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from shardq.engine.engine import Engine, EngineSettings, ResultItem, TaskSpec
from shardq.store.partitioned import PartitionedStore
from shardq.store.rocks import Store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    stats = {"mutations": 0, "commit_s": 0.0}
    real_commit = Store.commit

    def commit(self: Store) -> int:
        stats["mutations"] += self._batch.len()
        t = time.perf_counter()
        try:
            return real_commit(self)
        finally:
            stats["commit_s"] += time.perf_counter() - t

    Store.commit = commit  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as d:
        store = PartitionedStore(d, 1)
        engine = Engine(store, EngineSettings(lease_ms=60_000, depth_threshold=10**9,
                                              max_frame=64 << 20, max_payload=16 << 20))
        payload = b"x" * a.payload
        now = int(time.time() * 1000)
        stats["mutations"] = 0
        stats["commit_s"] = 0.0
        t0 = time.perf_counter()
        done = 0
        while done < a.tasks:
            engine.submit([TaskSpec("bench", payload) for _ in range(a.batch)], now)
            store.commit()
            got = engine.claim("w", a.batch, None, now)
            store.commit()
            engine.result("w", [ResultItem(t.id, t.attempt, "completed") for t, _ in got], now)
            store.commit()
            done += a.batch
        wall = time.perf_counter() - t0
        store.close()
    print(json.dumps({"label": a.label, "tasks": done, "batch": a.batch,
                      "mutations_per_lifecycle": round(stats["mutations"] / done, 2),
                      "us_per_lifecycle": round(wall / done * 1e6, 2),
                      "commit_us_per_lifecycle": round(stats["commit_s"] / done * 1e6, 2)}))


if __name__ == "__main__":
    main()
