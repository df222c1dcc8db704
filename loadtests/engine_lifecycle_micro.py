"""The engine's own cost of a task's lifecycle (SUBMIT, CLAIM, RESULT completed; batches of 100),
on the in-memory store: no sockets, no RocksDB, so that a change to the engine's hot path (such as
the per-transition bookkeeping of engine/insight.py) is measured without the noise of the rest.

    PYTHONPATH=TREE python loadtests/engine_lifecycle_micro.py --tasks 200000   # one JSON line

Run it for two trees, interleaved, a few rounds each (docs/benchmarks.md has the loop).
"""

from __future__ import annotations

import argparse
import json
import time

from shardq.engine.engine import Engine, EngineSettings
from shardq.specs import ResultItem, TaskSpec
from shardq.store.memory import MemoryStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()
    store = MemoryStore()
    engine = Engine(store, EngineSettings(max_frame=16 << 20, max_payload=1 << 20, depth_threshold=10**9))
    types = ["email", "sms", "report", "resize"]
    now = int(time.time() * 1000)
    t0 = time.process_time()
    for start in range(0, args.tasks, args.batch):
        engine.submit([TaskSpec(type=types[(start // args.batch) % 4], payload=b"{}")
                       for _ in range(args.batch)], now)
        store.commit()
        got = engine.claim("w", args.batch, None, now + 1)
        store.commit()
        engine.result("w", [ResultItem(t.id, t.attempt, "completed", b"") for t, _ in got], now + 3)
        store.commit()
        now += 1
    cpu = time.process_time() - t0
    print(json.dumps({"tasks": args.tasks, "engine_cpu_us_per_task": round(cpu / args.tasks * 1e6, 2)}))


if __name__ == "__main__":
    main()
