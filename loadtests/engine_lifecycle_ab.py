"""A/B of one shard's engine on the batched lifecycle, in process (no sockets, no server): each
round, each source tree runs SUBMIT 100 -> CLAIM 100 -> RESULT 100 batches on the in-memory
store (or RocksDB) in a fresh interpreter, and reports CPU microseconds per task; the medians
are printed at the end. Steadier than a whole-server A/B on a busy machine, as it measures only
the engine's own Python.

    python loadtests/engine_lifecycle_ab.py ROUNDS TASKS memory|rocks name=tree [name=tree ...]
"""

from __future__ import annotations

import statistics
import subprocess
import sys

ONE_RUN = r"""
import random, sys, tempfile, time
from shardq.engine.engine import Engine, EngineSettings, ResultItem, TaskSpec
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD
from shardq.store.memory import MemoryStore
from shardq.store.partitioned import PartitionedStore
kind, n = sys.argv[1], int(sys.argv[2])
store = MemoryStore(1) if kind == "memory" else PartitionedStore(tempfile.mkdtemp(), 1)
eng = Engine(store, EngineSettings(shards=1, lease_ms=30000, heartbeat_ms=15000, max_frame=MAX_FRAME,
                                   max_payload=MAX_PAYLOAD), rng=random.Random(1))
now = 1_700_000_000_000
t0 = time.process_time()
for _ in range(n // 100):
    eng.submit([TaskSpec("t", b"p" * 100) for _ in range(100)], now); store.commit()
    got = eng.claim("w1", 100, None, now); store.commit()
    eng.result("w1", [ResultItem(t.id, t.attempt, "completed", b"r") for t, _ in got], now); store.commit()
    now += 1
print((time.process_time() - t0) / n * 1e6)
"""


def main(argv: list[str]) -> int:
    rounds, tasks, kind = int(argv[1]), argv[2], argv[3]
    trees = [v.split("=", 1) for v in argv[4:]]
    got: dict[str, list[float]] = {name: [] for name, _ in trees}
    for _ in range(rounds):
        for name, tree in trees:
            out = subprocess.run([sys.executable, "-c", ONE_RUN, kind, tasks], cwd=tree, check=True,
                                 capture_output=True, text=True, env={"PYTHONPATH": tree})
            got[name].append(float(out.stdout))
    for name, runs in got.items():
        print(f"{name}: median {statistics.median(runs):.2f} us/task over {rounds} rounds "
              f"({', '.join(f'{r:.2f}' for r in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
