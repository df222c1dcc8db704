"""The engine alone on the batched lifecycle: CPU per task, no sockets, no disk.

    PYTHONPATH=<tree> python loadtests/engine_lifecycle_bench.py [--tasks N] [--batch B]

Drives ``Engine.submit``/``claim``/``result`` on the memory store (batches of B, 100-byte
payloads) and prints the best of 3 runs in µs of process CPU per task. Run it against two trees
in turn to see what a change to the engine costs on the hot path (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import random
import time

from shardq.engine.engine import Engine, EngineSettings
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD
from shardq.specs import ResultItem, TaskSpec
from shardq.store.memory import MemoryStore


def run(tasks: int, batch: int) -> float:
    store = MemoryStore(1)
    engine = Engine(store, EngineSettings(shards=1, lease_ms=30_000, heartbeat_ms=15_000,
                                          max_frame=MAX_FRAME, max_payload=MAX_PAYLOAD),
                    rng=random.Random(1))
    now = 1_700_000_000_000
    payload = b"x" * 100
    t0 = time.process_time()
    for _ in range(tasks // batch):
        engine.submit([TaskSpec("t", payload) for _ in range(batch)], now)
        store.commit()
        got = engine.claim("w", batch, None, now)
        store.commit()
        engine.result("w", [ResultItem(t.id, t.attempt, "completed", b"") for t, _ in got], now)
        store.commit()
        now += 1
    return (time.process_time() - t0) / tasks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    print(f"{min(run(args.tasks, args.batch) for _ in range(3)):.2f} us/task")


if __name__ == "__main__":
    main()
