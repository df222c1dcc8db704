"""Many schedules on one shard, in process: Engine + PartitionedStore (1 shard, RocksDB).

Adds N schedules that all tick every second (the worst case: all due at once), then measures
what a shard's loop pays: the longest loop turn while they fire (``Engine.tick`` + the group
commit of its tasks and records; at most FIRE_SLICE schedules per turn), the turns and the time
to fire them all, the cost of a tick when nothing is due, and the start-up cost of loading them
back (``Engine.recover`` after a reopen). No sockets, no server.

    PYTHONPATH=$PWD python loadtests/schedule_bench.py --schedules 10000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from shardq.engine.engine import Engine, EngineSettings
from shardq.schedule_specs import ScheduleSpec
from shardq.store.partitioned import PartitionedStore

MAX_FRAME = 16 * 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--schedules", type=int, default=10_000)
    ap.add_argument("--cron", action="store_true", help="'* * * * * *' crons instead of every_ms")
    args = ap.parse_args()
    settings = EngineSettings(max_frame=MAX_FRAME, max_payload=MAX_FRAME, depth_threshold=10_000_000)
    with tempfile.TemporaryDirectory() as d:
        store = PartitionedStore(d, 1)
        engine = Engine(store, settings)
        now = (int(time.time() * 1000) // 1000) * 1000 + 100
        t0 = time.perf_counter()
        for i in range(args.schedules):
            spec = ScheduleSpec(name=f"s{i}", type="report", payload=b'{"n":1}',
                                cron="* * * * * *" if args.cron else None,
                                every_ms=None if args.cron else 1000)
            engine.schedule_add(spec, now)
        store.commit()
        add_s = time.perf_counter() - t0
        idle = []
        for _ in range(1000):
            t = time.perf_counter()
            engine.tick(now)
            idle.append(time.perf_counter() - t)
        now += 1000  # every schedule is due
        turn_s: list[float] = []
        t0 = time.perf_counter()
        while True:
            t = time.perf_counter()
            nxt = engine.tick(now)
            store.commit()
            turn_s.append(time.perf_counter() - t)
            if nxt is None or nxt > now:
                break
        turns, longest = len(turn_s), max(turn_s)
        slowest_turn = turn_s.index(longest)
        median_turn = sorted(turn_s)[len(turn_s) // 2]
        fire_s = time.perf_counter() - t0
        fired = sum(s.fired for s in engine.schedule_list())
        store.close()
        store = PartitionedStore(d, 1)
        t0 = time.perf_counter()
        summary = Engine(store, settings).recover(now)
        load_s = time.perf_counter() - t0
        store.close()
    print(json.dumps({
        "schedules": args.schedules, "kind": "cron" if args.cron else "every_ms",
        "add_total_s": round(add_s, 3), "idle_tick_us": round(sorted(idle)[len(idle) // 2] * 1e6, 2),
        "fired": fired, "turns": turns,
        "median_turn_ms": round(median_turn * 1000, 2), "p90_turn_ms": round(sorted(turn_s)[int(turns * 0.9)] * 1000, 2), "slowest_turn": slowest_turn, "longest_turn_ms": round(longest * 1000, 2),
        "fire_all_s": round(fire_s, 3), "recover_s": round(load_s, 3),
        "recovered_schedules": summary["schedules"]}))


if __name__ == "__main__":
    main()
