"""shardq against beanstalkd and a Redis reliable queue, same payloads and batch sizes.

    apt-get install -y beanstalkd redis-server && pip install greenstalk redis
    python loadtests/compare.py --seconds 10

Workloads (each system gets a fresh server with a temp data dir, stopped afterwards):

- ``lifecycle``: one producer process submits batches of --batch tasks of --payload bytes, one
  consumer process takes and acknowledges them. shardq: SUBMIT of 100 / CLAIM max 100 / RESULT of
  100. beanstalkd has no batches: 100 `put`s, then `reserve` + `delete` per job. Redis: LPUSH of 100
  values in one command; the consumer LMOVEs each job to a processing list (pipelined by 100) and
  LREMs it there (pipelined). Throughput = jobs acknowledged per second.
- ``unpipelined``: 4 producer and 4 consumer processes, one task per request (SUBMIT of 1, CLAIM
  max 1, RESULT of 1; beanstalkd put / reserve + delete; Redis LPUSH / LMOVE + LREM).
- ``producers64``: 64 concurrent producers (4 processes x 16 threads), one task per request,
  durable before the answer: shardq `sync=always` (group commit), beanstalkd `-f 0` (fsync every
  write). Throughput = acknowledged submits per second.

beanstalkd runs with its binlog (`-b`): default fsync (`-f 50`: at most every 50 ms) or `-f 0`.
Redis runs with AOF on, `appendfsync everysec`. The load generator shares the machine's cores.
Each row also gives the server's CPU (user + system, its children included: shardq's shards)
per acknowledged task, from psutil before and after the workload, and the load generator's
(``client_cpu_us_per_ack``, the client processes' own ``os.times``): on a machine whose cores the
load generator shares, a client that costs more lowers the throughput of its row too. Every client
uses a blocking socket without a timeout, and its library is imported before the processes fork.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

QUEUE = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def beanstalkd(fsync_ms: int | None) -> Iterator[dict[str, Any]]:
    tmp = tempfile.mkdtemp(prefix="beanstalkd-")
    port = free_port()
    cmd = ["beanstalkd", "-l", "127.0.0.1", "-p", str(port), "-b", tmp]
    if fsync_ms is not None:
        cmd += ["-f", str(fsync_ms)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield {"kind": "beanstalkd", "port": port, "pid": proc.pid}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[dict[str, Any]]:
    tmp = tempfile.mkdtemp(prefix="redis-")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
                             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
                            stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield {"kind": "redis", "port": port, "pid": proc.pid}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def shardq_server(sync: str, shards: int) -> Iterator[dict[str, Any]]:
    from shardq.testing import ServerProcess

    tmp = tempfile.mkdtemp(prefix="shardq-compare-")
    srv = ServerProcess(os.path.join(tmp, "data"), ["--shards", str(shards), "--sync", sync,
                                                    "--queue-depth-threshold", "10000000"]).start()
    try:
        yield {"kind": "shardq", "port": srv.port, "pid": srv.pid}
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# -- clients: put a batch, take-and-ack up to n, put one ----------------------------------------

class Shardq:
    def __init__(self, port: int) -> None:
        from shardq.client.connection import Connection
        from shardq.protocol.frames import MsgType

        self.T = MsgType
        # A blocking socket without a timeout, as greenstalk's and redis-py's: with one, CPython
        # polls before every send and every recv (two more syscalls a request, client side).
        self.conn = Connection("127.0.0.1", port, timeout=None)

    def put_batch(self, payload: bytes, n: int) -> None:
        self.conn.call(self.T.SUBMIT, {"tasks": [{"type": QUEUE, "payload_len": len(payload)}] * n}, payload * n)

    def take_ack(self, n: int) -> int:
        tasks = self.conn.call(self.T.CLAIM, {"worker_id": "w", "max": n, "wait_ms": 200}).header["tasks"]
        if tasks:
            self.conn.call(self.T.RESULT, {"worker_id": "w", "results": [
                {"id": t["id"], "attempt": t["attempt"], "status": "completed"} for t in tasks]})
        return len(tasks)


class Beanstalk:
    def __init__(self, port: int) -> None:
        import greenstalk

        self.c = greenstalk.Client(("127.0.0.1", port), use=QUEUE, watch=QUEUE)
        self.timeout_error = greenstalk.TimedOutError

    def put_batch(self, payload: bytes, n: int) -> None:
        for _ in range(n):
            self.c.put(payload)

    def take_ack(self, n: int) -> int:
        done = 0
        for _ in range(n):
            try:
                job = self.c.reserve(timeout=0 if done else 1)
            except self.timeout_error:
                break
            self.c.delete(job)
            done += 1
        return done


class Redis:
    def __init__(self, port: int) -> None:
        import redis

        self.r = redis.Redis(port=port)

    def put_batch(self, payload: bytes, n: int) -> None:
        self.r.lpush(QUEUE, *([payload] * n))

    def take_ack(self, n: int) -> int:
        pipe = self.r.pipeline(transaction=False)
        for _ in range(n):
            pipe.lmove(QUEUE, QUEUE + ":processing", "RIGHT", "LEFT")
        jobs = [j for j in pipe.execute() if j is not None]
        if not jobs:
            job = self.r.blmove(QUEUE, QUEUE + ":processing", 0.2, "RIGHT", "LEFT")
            jobs = [job] if job is not None else []
        pipe = self.r.pipeline(transaction=False)
        for job in jobs:
            pipe.lrem(QUEUE + ":processing", 1, job)
        pipe.execute()
        return len(jobs)


CLIENTS: dict[str, Callable[[int], Any]] = {"shardq": Shardq, "beanstalkd": Beanstalk, "redis": Redis}
# Each client's library, imported once here before the load processes fork, so that none spends
# its measured seconds importing (redis-py took ~85 ms of CPU, ~360 ms of wall time on a loaded
# machine, in each of 8 processes; shardq's client came in with shardq.testing already).
CLIENT_MODULES = {"shardq": "shardq.client.connection", "beanstalkd": "greenstalk", "redis": "redis"}


def preload(kind: str) -> None:
    importlib.import_module(CLIENT_MODULES[kind])


# -- workloads ----------------------------------------------------------------------------------

def _producer(kind: str, port: int, payload: bytes, batch: int, deadline: float, out: Any) -> None:
    client = CLIENTS[kind](port)
    sent = 0
    while time.time() < deadline:
        client.put_batch(payload, batch)
        sent += batch
    out.put(("sent", sent, _cpu_seconds()))


def _consumer(kind: str, port: int, batch: int, deadline: float, out: Any) -> None:
    client = CLIENTS[kind](port)
    done = 0
    while time.time() < deadline:
        done += client.take_ack(batch)
    out.put(("done", done, _cpu_seconds()))


def _cpu_seconds() -> float:
    """This load-generator process's CPU (user + system): whether the client side is the limit."""
    t = os.times()
    return t.user + t.system


def lifecycle(server: dict[str, Any], payload: int, batch: int, seconds: float,
              clients: int = 1) -> dict[str, Any]:
    """``clients`` producer processes and as many consumers; batch 1 is the unpipelined case."""
    preload(server["kind"])
    out: Any = multiprocessing.Queue()
    deadline = time.time() + seconds
    procs = []
    for _ in range(clients):
        procs.append(multiprocessing.Process(target=_producer, args=(
            server["kind"], server["port"], b"x" * payload, batch, deadline, out)))
        procs.append(multiprocessing.Process(target=_consumer, args=(
            server["kind"], server["port"], batch, deadline, out)))
    t0 = time.time()
    for p in procs:
        p.start()
    got = {"done": 0, "sent": 0}
    client_cpu = 0.0
    for _ in procs:
        key, n, cpu = out.get(timeout=seconds + 60)
        got[key] += n
        client_cpu += cpu
    for p in procs:
        p.join(10)
    elapsed = time.time() - t0
    return {"acked": got["done"], "acked_per_s": round(got["done"] / elapsed),
            "submitted_per_s": round(got["sent"] / elapsed),
            "client_cpu_us_per_ack": round(client_cpu / got["done"] * 1e6, 1) if got["done"] else None}


def _producer_threads(kind: str, port: int, payload: bytes, threads: int, deadline: float, out: Any) -> None:
    counts = [0] * threads

    def run(i: int) -> None:
        client = CLIENTS[kind](port)
        while time.time() < deadline:
            client.put_batch(payload, 1)
            counts[i] += 1

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(sum(counts))


def producers(server: dict[str, Any], payload: int, seconds: float, total: int = 64,
              processes: int = 4) -> dict[str, Any]:
    preload(server["kind"])
    out: Any = multiprocessing.Queue()
    deadline = time.time() + seconds
    procs = [multiprocessing.Process(target=_producer_threads, args=(
        server["kind"], server["port"], b"x" * payload, total // processes, deadline, out))
        for _ in range(processes)]
    t0 = time.time()
    for p in procs:
        p.start()
    sent = sum(out.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join(10)
    return {"acked": sent, "acked_per_s": round(sent / (time.time() - t0))}


def server_cpu(pid: int) -> float:
    """User + system CPU seconds of a server process and all its children (shardq's shards)."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="row names to run (default: all)")
    args = ap.parse_args(argv)
    rows: list[tuple[str, Callable[[], Any], Callable[[dict[str, Any]], dict[str, Any]]]] = [
        ("lifecycle shardq sync=interval", lambda: shardq_server("interval", args.shards),
         lambda s: lifecycle(s, args.payload, args.batch, args.seconds)),
        ("lifecycle shardq sync=always", lambda: shardq_server("always", args.shards),
         lambda s: lifecycle(s, args.payload, args.batch, args.seconds)),
        ("lifecycle beanstalkd binlog, default fsync", lambda: beanstalkd(None),
         lambda s: lifecycle(s, args.payload, args.batch, args.seconds)),
        ("lifecycle beanstalkd binlog, -f 0", lambda: beanstalkd(0),
         lambda s: lifecycle(s, args.payload, args.batch, args.seconds)),
        ("lifecycle redis AOF everysec", redis_server,
         lambda s: lifecycle(s, args.payload, args.batch, args.seconds)),
        ("unpipelined shardq sync=interval", lambda: shardq_server("interval", args.shards),
         lambda s: lifecycle(s, args.payload, 1, args.seconds, clients=4)),
        ("unpipelined beanstalkd binlog, default fsync", lambda: beanstalkd(None),
         lambda s: lifecycle(s, args.payload, 1, args.seconds, clients=4)),
        ("unpipelined redis AOF everysec", redis_server,
         lambda s: lifecycle(s, args.payload, 1, args.seconds, clients=4)),
        ("producers64 shardq sync=always", lambda: shardq_server("always", args.shards),
         lambda s: producers(s, args.payload, args.seconds)),
        ("producers64 beanstalkd binlog, -f 0", lambda: beanstalkd(0),
         lambda s: producers(s, args.payload, args.seconds)),
        ("producers64 beanstalkd binlog, default fsync", lambda: beanstalkd(None),
         lambda s: producers(s, args.payload, args.seconds)),
        ("producers64 redis AOF everysec", redis_server, lambda s: producers(s, args.payload, args.seconds)),
    ]
    for name, start, workload in rows:
        if args.only and not any(o in name for o in args.only):
            continue
        with start() as server:
            cpu0 = server_cpu(server["pid"])
            result = workload(server)
            cpu = server_cpu(server["pid"]) - cpu0
        acked = result.pop("acked")
        result["server_cpu_us_per_ack"] = round(cpu / acked * 1e6, 1) if acked else None
        print(json.dumps({"row": name, "payload": args.payload, "batch": args.batch, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
