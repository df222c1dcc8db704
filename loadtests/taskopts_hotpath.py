"""The hot path of a task without options, in-process and in CPU time: SUBMIT decoded by the fast
path (protocol/typed.py), stored by the engine, claimed, completed (engine on the in-memory
store, no sockets), batches of 100. Run it from two source trees alternately to see what a
change costs a task that does not use it (docs/benchmarks.md, "Task options on the hot path"):

    for i in 1 2 3 4 5; do for t in /tmp/base /tmp/new; do
      (cd $t && PYTHONPATH=$t python loadtests/taskopts_hotpath.py --label $(basename $t)); done; done

Prints one JSON line: label, tasks, CPU microseconds per task (the best of --repeat runs: the
least disturbed by other processes on the machine).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import orjson

from shardq.engine.engine import Engine, EngineSettings, ResultItem
from shardq.protocol import typed
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD
from shardq.store.memory import MemoryStore

BATCH = 100


def run(tasks: int) -> float:
    store = MemoryStore(1)
    engine = Engine(store, EngineSettings(shard=0, shards=1, lease_ms=30_000, heartbeat_ms=15_000,
                                          max_frame=MAX_FRAME, max_payload=MAX_PAYLOAD,
                                          depth_threshold=10**9))
    payload = b'{"n":1}'
    heads = []
    for _ in range(tasks // BATCH):
        head = orjson.dumps({"rid": 1, "tasks": [{"type": "bench", "payload_len": len(payload),
                                                   "id": str(uuid.uuid4())} for _ in range(BATCH)]})
        heads.append(head)
    blob = payload * BATCH
    now = int(time.time() * 1000)
    t0 = time.process_time()
    for head in heads:
        rid_specs = typed.submit(head, blob, MAX_PAYLOAD)
        assert rid_specs is not None
        engine.submit(rid_specs[1], now)
        store.commit()
        got = engine.claim("w", BATCH, None, now)
        store.commit()
        engine.result("w", [ResultItem(t.id, t.attempt, "completed", b"ok") for t, _ in got], now)
        store.commit()
    took = time.process_time() - t0
    assert store.counts[2] == tasks  # every task completed
    return took / tasks * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="tree")
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    best = min(run(args.tasks) for _ in range(args.repeat))
    print(json.dumps({"label": args.label, "tasks": args.tasks, "cpu_us_per_task": round(best, 3)}))


if __name__ == "__main__":
    main()
