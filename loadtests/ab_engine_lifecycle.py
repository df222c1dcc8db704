"""A/B of the engine's batched lifecycle (SUBMIT 100, CLAIM 100, RESULT 100) on the in-memory
store, in-process: the hot path's own CPU cost, without sockets or the disk, so that a change of a
few percent shows through a busy machine's noise. Each round runs every tree in a fresh
interpreter, in alternating order; one JSON line per run, then the medians.

    python loadtests/ab_engine_lifecycle.py ROUNDS TASKS name=tree[:mode] [name=tree[:mode] ...]

``mode`` (for a tree with per-type controls): ``cap`` puts a cap of 10^6 on the lifecycle's type
(the metered path: slots counted, never reached), ``other-cap`` a cap on another type (the
lifecycle's type is not metered, but the check runs), ``rate`` a rate of 10^6/s on it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time
from shardq.engine.engine import Engine, EngineSettings, ResultItem, TaskSpec
from shardq.store.memory import MemoryStore
tasks, batch = int(sys.argv[1]), 100
e = Engine(MemoryStore(), EngineSettings(max_frame=16 << 20, max_payload=10 << 20))
now = 1_700_000_000_000
payload = b"x" * 100
mode = sys.argv[2]
if mode:
    from shardq.engine.controls import TypeControl
    kw = {"cap": {"max_concurrency": 10**6}, "other-cap": {"max_concurrency": 10**6},
          "rate": {"rate": 1e6, "burst": 10**6}}[mode]
    e.apply_control(TypeControl("other" if mode == "other-cap" else "lifecycle", version=1, **kw), now,
                    full_budget=True)
    e.tick(now + 1000)  # a full bucket
    now += 1000
t0 = time.process_time()
for i in range(tasks // batch):
    e.submit([TaskSpec(type="lifecycle", payload=payload) for _ in range(batch)], now + i)
    got = e.claim("w", batch, None, now + i)
    e.result("w", [ResultItem(t.id, t.attempt, "completed") for t, _ in got], now + i)
    e.store.commit()
    e.tick(now + i)
took = time.process_time() - t0
print(took / tasks * 1e6)
"""


def main() -> None:
    rounds, tasks = int(sys.argv[1]), int(sys.argv[2])
    variants = [v.split("=", 1) for v in sys.argv[3:]]
    modes = {name: tree.partition(":")[2] for name, tree in variants}
    variants = [[name, tree.partition(":")[0]] for name, tree in variants]
    runs: dict[str, list[float]] = {name: [] for name, _ in variants}
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, tree in order:
            out = subprocess.run([sys.executable, "-c", CHILD, str(tasks), modes[name]], capture_output=True, text=True,
                                 check=True, cwd=tree, env={**os.environ, "PYTHONPATH": tree})
            us = float(out.stdout.strip())
            runs[name].append(us)
            print(json.dumps({"variant": name, "round": r + 1, "cpu_us_per_task": round(us, 3)}), flush=True)
    base = statistics.median(runs[variants[0][0]])
    for name, values in runs.items():
        med = statistics.median(values)
        print(json.dumps({"variant": name, "median_cpu_us_per_task": round(med, 3),
                          "vs_first": f"{(med / base - 1) * 100:+.1f} %"}))


if __name__ == "__main__":
    main()
