"""SEARCH on one shard holding N tasks: how long a page takes and how many keys it looks at.

Builds a RocksDB store of N tasks straight through the engine (SUBMIT in batches, a third of them
then completed, 1 % dead-lettered with a few error texts), then times pages of several searches,
each resumed with its cursor to the end (or for --pages pages). Each page looks at most
SEARCH_SLICE keys (engine/search.py), so its time is bounded whatever N is.

    python loadtests/search_bench.py --tasks 1000000 [--pages 200] [--dir /tmp/sb]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from shardq.engine.engine import Engine, EngineSettings
from shardq.engine.search import SEARCH_SLICE, SearchQuery
from shardq.protocol.frames import MAX_FRAME
from shardq.specs import ResultItem, TaskSpec
from shardq.store.partitioned import PartitionedStore
from shardq.task import CANCELLED, COMPLETED, DEAD_LETTER, PENDING


def build(path: str, n: int) -> tuple[Engine, PartitionedStore, float]:
    store = PartitionedStore(path, 1)
    engine = Engine(store, EngineSettings(max_frame=MAX_FRAME, max_payload=1 << 20, default_max_retries=0,
                                          depth_threshold=10 * n))
    t0 = time.perf_counter()
    now = int(time.time() * 1000) - 3600_000
    types = ["email", "sms", "report", "resize", "billing"]
    for start in range(0, n, 1000):
        specs = [TaskSpec(type=types[(start + i) % 5], payload=b"{}", priority=(start + i) % 256)
                 for i in range(min(1000, n - start))]
        engine.submit(specs, now + start // 100)
        store.commit()
        if (start // 1000) % 3 == 0:  # a third of the batches run: completed, some dead letters
            got = engine.claim("w", len(specs), None, now + start // 100)
            engine.result("w", [ResultItem(t.id, t.attempt, "failed" if k % 30 == 0 else "completed", b"",
                                           f"timeout after {k}.5 s on 10.0.0.{k % 250}", False)
                                for k, (t, _) in enumerate(got)], now + start // 100 + 5)
            store.commit()
    return engine, store, time.perf_counter() - t0


def run(engine: Engine, name: str, q: SearchQuery, pages: int) -> dict[str, object]:
    times, found, scanned = [], 0, 0
    cursor = None
    for _ in range(pages):
        t0 = time.perf_counter()
        tasks, cursor, n = engine.search(q, cursor, 100)
        times.append(time.perf_counter() - t0)
        found += len(tasks)
        scanned += n
        if cursor is None:
            break
    times.sort()
    return {"search": name, "pages": len(times), "found": found, "keys_scanned": scanned,
            "page_ms_p50": round(statistics.median(times) * 1000, 2),
            "page_ms_max": round(times[-1] * 1000, 2), "pages_per_s": round(len(times) / sum(times), 1),
            "finished": cursor is None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--pages", type=int, default=200, help="at most this many pages per search")
    ap.add_argument("--dir", default=None, help="data dir (default: a temp dir)")
    args = ap.parse_args()
    path = args.dir or tempfile.mkdtemp(prefix="search_bench_")
    engine, store, took = build(path, args.tasks)
    counts = dict(zip(("pending", "in_progress", "completed", "failed", "dead_letter", "cancelled"), store.counts))
    print(json.dumps({"built_tasks": args.tasks, "seconds": round(took, 1), "counts": counts,
                      "search_slice": SEARCH_SLICE, "dir": path}))
    some = next(iter(engine.search(SearchQuery(statuses=frozenset([PENDING])), None, 1)[0])).id.hex()
    searches = {
        "status=pending (family walk)": SearchQuery(statuses=frozenset([PENDING])),
        "type=sms (idx_type)": SearchQuery(type="sms"),
        "status=dead_letter error=timeout (idx_dead)": SearchQuery(statuses=frozenset([DEAD_LETTER]), error="timeout"),
        "status=completed,cancelled last 10 min (idx_finished)": SearchQuery(
            statuses=frozenset([COMPLETED, CANCELLED]), updated_from=int(time.time() * 1000) - 600_000),
        "id prefix (6 hex digits)": SearchQuery(id_prefix=some[:6]),
        "priority 250-255, error 'no such' (full walk, rare match)": SearchQuery(min_priority=250, error="no such"),
    }
    for name, q in searches.items():
        print(json.dumps(run(engine, name, q, args.pages)))
    store.close()
    if args.dir is None:
        os.system(f"rm -rf {path}")


if __name__ == "__main__":
    main()
