"""Shard scaling: lifecycle throughput, server CPU and cross-shard hops per shard count.

    python loadtests/shard_scaling.py --shards 1 2 --seconds 10
    python loadtests/shard_scaling.py --shards 1 2 4 8 12 --pairs 12 --seconds 20   # a 16-core box
    python loadtests/shard_scaling.py --priority-order --shards 2

A lifecycle is SUBMIT (batches of --batch) + CLAIM (max --batch) + RESULT completed, by
--pairs producer/worker process pairs. ``plain`` clients connect without a hint (the
acceptor places them); ``aware`` clients pin pair *k* to shard k mod N with the HELLO hint,
so all their traffic is local; ``crossed`` pins every producer to shard 0 and every worker to
shard 1, so every CLAIM and RESULT crosses shards (the worst placement). ``client`` uses the
bundled ``shardq.Client`` with its defaults (``submit_many``, ``claim``, ``report``): it spreads
over the shards by itself (a connection per shard, shardq/client/spread.py); run it with an
older checkout on PYTHONPATH to see a client that does not.
Server CPU is the user+system time of the supervisor and all its children (acceptor, shards,
coordinator) over the run; hops are the requests the shards forwarded to each other (GET_STATS
rows' ``forwarded``), per lifecycle.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from typing import Any

import psutil

from shardq.client.connection import Connection
from shardq.protocol.frames import MsgType
from shardq.testing import ServerProcess


def tree_cpu(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def connect(port: int, shard: int | None) -> Connection:
    conn = Connection("127.0.0.1", port, timeout=30)
    header: dict[str, Any] = {"client": "shard_scaling/1", "protocol": 1}
    if shard is not None:
        header["shard"] = shard
    conn.call(MsgType.HELLO, header)
    return conn


def producer(port: int, shard: int | None, batch: int, payload: bytes, deadline: float, out: Any) -> None:
    conn = connect(port, shard)
    header = {"tasks": [{"type": "bench", "payload_len": len(payload)}] * batch}
    blob = payload * batch
    sent = 0
    window = 4  # pipelined batches in flight
    rids = [conn.send(MsgType.SUBMIT, header, blob) for _ in range(window)]
    while rids:
        msg = conn.wait_for(rids.pop(0))
        if msg.type == MsgType.ACK:
            sent += batch
        elif msg.header["error"]["code"] == "QueueFull":
            time.sleep(0.01)
        if time.time() < deadline:
            rids.append(conn.send(MsgType.SUBMIT, header, blob))
    out.put(("submitted", sent))


def client_producer(port: int, shard: int | None, batch: int, payload: bytes, deadline: float,
                    out: Any) -> None:
    from shardq import Client
    from shardq.client.models import Job
    from shardq.errors import QueueFull
    client = Client(f"shardq://127.0.0.1:{port}", timeout=30)
    sent = 0
    while time.time() < deadline:
        try:
            sent += len(client.submit_many([Job("bench", payload) for _ in range(batch)]))
        except QueueFull:
            time.sleep(0.01)
    client.close()
    out.put(("submitted", sent))


def client_worker(port: int, shard: int | None, batch: int, deadline: float, wid: str, out: Any) -> None:
    from shardq import Client
    client = Client(f"shardq://127.0.0.1:{port}", timeout=30)
    done = 0
    while time.time() < deadline + 2:
        tasks = client.claim(wid, max=batch, wait=0.2, types=["bench"])
        if not tasks:
            if time.time() > deadline:
                break
            continue
        client.report(wid, [({"id": t.id, "attempt": t.attempt, "status": "completed"}, b"") for t in tasks])
        done += len(tasks)
    client.close()
    out.put(("completed", done))


def worker(port: int, shard: int | None, batch: int, deadline: float, wid: str, out: Any) -> None:
    conn = connect(port, shard)
    done = 0
    while time.time() < deadline + 2:
        got = conn.call(MsgType.CLAIM, {"worker_id": wid, "max": batch, "wait_ms": 200})
        tasks = got.header["tasks"]
        if not tasks:
            if time.time() > deadline:
                break
            continue
        conn.call(MsgType.RESULT, {"worker_id": wid, "results": [
            {"id": t["id"], "attempt": t["attempt"], "status": "completed"} for t in tasks]})
        done += len(tasks)
    out.put(("completed", done))


def shard_rows(port: int) -> list[dict[str, Any]]:
    conn = connect(port, None)
    rows = conn.call(MsgType.GET_STATS, {}).header["shards"]
    conn.close()
    return rows


def run(shards: int, mode: str, pairs: int, batch: int, seconds: float, payload_size: int,
        sync: str, backlog: int) -> dict[str, Any]:
    data = tempfile.mkdtemp(prefix="shardq-scaling-")
    # The backlog bound (QueueFull beyond it; producers pause 10 ms) keeps the submits close to
    # the completions, so that server CPU per completed lifecycle is not inflated by tasks
    # submitted and never claimed within the run.
    srv = ServerProcess(data, ["--shards", str(shards), "--sync", sync],
                        env={"SHARDQ_BROKER__QUEUE_DEPTH_THRESHOLD": str(backlog)}).start()
    try:
        before_rows = shard_rows(srv.port)
        cpu0 = tree_cpu(srv.pid)
        t0 = time.time()
        deadline = t0 + seconds
        out: Any = multiprocessing.Queue()
        procs = []
        for k in range(pairs):
            pin = (k % shards) if mode == "aware" else None
            worker_pin = pin
            if mode == "crossed":  # all work made on shard 0, all workers on shard 1
                pin, worker_pin = 0, 1
            bundled = mode == "client"
            procs.append(multiprocessing.Process(target=client_producer if bundled else producer, args=(
                srv.port, pin, batch, b"x" * payload_size, deadline, out)))
            procs.append(multiprocessing.Process(target=client_worker if bundled else worker, args=(
                srv.port, worker_pin, batch, deadline, f"w{k}", out)))
        for p in procs:
            p.start()
        results: dict[str, int] = {"submitted": 0, "completed": 0}
        for _ in procs:
            kind, n = out.get(timeout=seconds + 120)
            results[kind] += n
        elapsed = time.time() - t0
        for p in procs:
            p.join(10)
        cpu = tree_cpu(srv.pid) - cpu0
        after_rows = shard_rows(srv.port)
        forwarded = sum(r.get("forwarded", 0) for r in after_rows) - sum(
            r.get("forwarded", 0) for r in before_rows)
        cross = sum(r.get("cross_shard_claims", 0) for r in after_rows)
        per_shard = [sum(int(r.get(k) or 0) for k in ("pending", "in_progress", "completed", "failed"))
                     for r in after_rows]
        done = max(1, results["completed"])
        return {"shards": shards, "mode": mode, "pairs": pairs, "batch": batch,
                "lifecycles_per_s": round(results["completed"] / elapsed),
                "server_cpu_us_per_lifecycle": round(cpu / done * 1e6, 1),
                "hops_per_lifecycle": round(forwarded / done, 4),
                "cross_shard_claimed_tasks": cross, "completed": results["completed"],
                "submitted": results["submitted"], "tasks_per_shard": per_shard,
                "cores": os.cpu_count()}
    finally:
        srv.stop()


def priority_order(shards: int, tasks: int) -> dict[str, Any]:
    """Tasks with random priorities spread over every shard; one plain worker drains them
    with max=1. A claim is an inversion when a higher-priority task was still queued."""
    data = tempfile.mkdtemp(prefix="shardq-prio-")
    srv = ServerProcess(data, ["--shards", str(shards)]).start()
    try:
        rng = random.Random(7)
        for s in range(shards):
            conn = connect(srv.port, s)
            specs = [{"type": "p", "payload_len": 0, "priority": rng.randrange(256)}
                     for _ in range(tasks // shards)]
            conn.call(MsgType.SUBMIT, {"tasks": specs})
        time.sleep(0.3)  # the coordinator's ready table settles
        conn = connect(srv.port, None)
        got: list[int] = []
        while True:
            tasks_ = conn.call(MsgType.CLAIM, {"worker_id": "w", "max": 1}).header["tasks"]
            if not tasks_:
                break
            got.append(tasks_[0]["priority"])
        def tier(p: int) -> int:
            return 2 if p >= 200 else 1 if p >= 100 else 0

        remaining = sorted(got)
        inversions = tier_inversions = 0
        gap = 0
        for p in got:
            best = remaining[-1]
            if best > p:
                inversions += 1
                gap += best - p
            if tier(best) > tier(p):
                tier_inversions += 1
            remaining.remove(p)
        return {"shards": shards, "tasks": len(got), "inversion_rate": round(inversions / max(1, len(got)), 3),
                "tier_inversion_rate": round(tier_inversions / max(1, len(got)), 3),
                "mean_priority_gap_when_inverted": round(gap / max(1, inversions), 1)}
    finally:
        srv.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=["plain", "aware"], choices=["plain", "aware", "crossed", "client"])
    ap.add_argument("--pairs", type=int, default=2, help="producer/worker process pairs")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sync", default="interval", choices=["always", "interval", "none"])
    ap.add_argument("--backlog", type=int, default=5000,
                    help="queue depth beyond which SUBMITs get QueueFull (default 5000)")
    ap.add_argument("--priority-order", action="store_true", help="measure cross-shard priority order")
    ap.add_argument("--tasks", type=int, default=2000, help="tasks for --priority-order")
    args = ap.parse_args(argv)
    rows = []
    for shards in args.shards:
        if args.priority_order:
            rows.append(priority_order(shards, args.tasks))
            print(json.dumps(rows[-1]), flush=True)
            continue
        for mode in args.modes:
            if mode in ("aware", "crossed", "client") and shards == 1 and "plain" in args.modes:
                continue  # same as plain
            rows.append(run(shards, mode, args.pairs, args.batch, args.seconds, args.payload, args.sync,
                            args.backlog))
            print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
