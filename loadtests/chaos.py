"""Chaos run: kill -9 random processes of a multi-shard server under load, then check every task.

    python loadtests/chaos.py --seconds 40                  # 2 shards, 3 producers, 2 workers
    python loadtests/chaos.py --seconds 120 --shards 4 --producers 4
    python loadtests/chaos.py --seconds 40 --deps           # cross-shard dependency pairs
    python loadtests/chaos.py --seconds 40 --max-concurrency 5   # a broker-wide cap, checked

A real ``shardq serve --shards S`` (short leases) runs in a temp dir. Producer threads submit
batches of 20 through ``shardq.Client`` and record every id the server acknowledged; one
``shardq worker --shard k`` per shard completes them, each run appending the task id to a marks
file. Every 1.5-4 s one child of the supervisor (a random shard, the acceptor or the
coordinator) is killed with SIGKILL; the supervisor restarts it. After ``--seconds`` the killing
and the producers stop, and the run waits (at most ``--settle`` seconds) for every acknowledged
task to be completed. It prints:

- kills by process, acknowledged tasks, and the errors producers saw;
- acknowledged tasks missing from the broker or not completed (must be 0: the run exits 1);
- handler runs: tasks run more than once (at-least-once: a shard that crashed before a result
  was committed hands the task out again), and acknowledged tasks never run (must be 0).

``--kill-workers``: the workers are victims too; a killed worker is replaced at once by a new
one (a new worker id), and the dead one's leases come back when it is declared dead.

``--deps``: each batch is 10 (dependency, dependent) pairs whose client ids put the two on
different shards, so every SUBMIT is split across owners and every dependency is remote; the run
also checks that no dependent's handler started before its dependency's did.

``--max-concurrency N``: the task type gets a broker-wide concurrency cap of N (SET_LIMITS, before
the first task); each handler run records its start and end (it runs at least 5 ms), and the run
checks that at no instant more than N handlers ran at once, across every worker and every kill.

Producer errors are expected only while a shard is down for longer than the client's 10 s
``Unavailable`` retry: when it is killed again within 10 s of a restart, the supervisor's
crash-loop backoff (doubling up to 5 s) keeps it down longer. ``SHARDQ_CHAOS_LOG=FILE`` writes
the server's log and the producers' errors (with times) there, to line them up.

Every loop is bounded by ``--seconds`` and ``--settle``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import shardq  # noqa: E402 -- after the path fix, so that the checkout is what runs
from shardq.errors import ShardqError  # noqa: E402
from shardq.task import id_to_str, new_ids  # noqa: E402

app = shardq.App()


@app.task("chaos")
def chaos_task(ctx: shardq.worker.TaskContext) -> bytes:
    started = time.time()
    with open(os.environ["SHARDQ_CHAOS_MARKS"], "a") as marks:
        marks.write(f"{ctx.id} {started:.6f}\n")  # one short append: whole lines with 8 threads
    spans = os.environ.get("SHARDQ_CHAOS_SPANS")
    if spans:  # --max-concurrency: how long this run held its slot
        time.sleep(0.005)
        with open(spans, "a") as out:
            out.write(f"{ctx.id} {started:.6f} {time.time():.6f}\n")
    return b"ok"


def peak_overlap(spans_file: str) -> int:
    """The most handler runs that were running at the same instant."""
    events = []
    for line in Path(spans_file).read_text().splitlines():
        _, start, end = line.split()
        events += [(float(start), 1), (float(end), -1)]
    running = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at a tie
        running += step
        peak = max(peak, running)
    return peak


class Producers:
    """Threads that submit batches until stopped, keeping every acknowledged id."""

    def __init__(self, url: str, count: int, shards: int, deps: bool) -> None:
        self.url = url
        self.shards = shards
        self.deps = deps
        self.acked: list[str] = []
        self.pairs: list[tuple[str, str]] = []  # (dependency, dependent) with --deps
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(count)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _run(self, k: int) -> None:
        client = shardq.Client(self.url, timeout=10, retries=20)
        rng = random.Random(k)
        while not self.stop.is_set():
            jobs = [shardq.Job("chaos", b"x" * 100) for _ in range(20)]
            if self.deps:  # 10 pairs, each split over two shards: the batch is routed across owners
                jobs = []
                for _ in range(10):
                    a, b = rng.sample(range(self.shards), 2)
                    parent = id_to_str(new_ids(1, a, self.shards)[0])
                    jobs.append(shardq.Job("chaos", b"x" * 100, id=parent))
                    jobs.append(shardq.Job("chaos", b"x" * 100, id=id_to_str(new_ids(1, b, self.shards)[0]),
                                           depends_on=[parent]))
            try:
                ids = client.submit_many(jobs)
            except (ShardqError, OSError) as exc:  # TimeoutError is an OSError
                with self._lock:
                    self.errors.append(f"{time.strftime('%H:%M:%S')} producer {k}: "
                                       f"{type(exc).__name__}: {exc}")
                time.sleep(0.2)
                continue
            with self._lock:
                self.acked.extend(ids)
                if self.deps:
                    self.pairs.extend(zip(ids[0::2], ids[1::2]))
            time.sleep(0.005)


def child_pids(server: object) -> dict[str, int]:
    """The latest pid the supervisor logged for each child."""
    pids: dict[str, int] = {}
    for line in server.stderr_lines:  # type: ignore[attr-defined]
        m = re.search(r"supervisor .*: (\S+) started \(pid (\d+)\)", line)
        if m:
            pids[m.group(1)] = int(m.group(2))
    return pids


def settle(url: str, ids: list[str], limit_s: float) -> tuple[list[str], list[tuple[str, str]]]:
    """Wait until every id is completed; returns (missing ids, (id, status) not completed)."""
    client = shardq.Client(url, timeout=30, retries=20)
    deadline = time.monotonic() + limit_s
    while True:
        infos = [x for i in range(0, len(ids), 1000) for x in client.status_many(ids[i:i + 1000])]
        missing = [tid for tid, info in zip(ids, infos) if info is None]
        open_ = [(info.id, info.status) for info in infos if info is not None and info.status != "completed"]
        if (not missing and not open_) or time.monotonic() > deadline:
            client.close()
            return missing, open_
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to kill (default 40)")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds to wait for the backlog to complete afterwards (default 120)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kill-workers", action="store_true",
                        help="also SIGKILL the workers now and then (a new one starts at once; the "
                             "dead one's leases come back when the coordinator declares it dead)")
    parser.add_argument("--sync", choices=("always", "interval", "none"), default="interval",
                        help="the server's persistence.sync (default interval; none is not crash-safe "
                             "against a machine crash, but is against a process kill)")
    parser.add_argument("--max-concurrency", type=int, default=None, metavar="N",
                        help="cap the task type at N running at once (broker-wide) and check that "
                             "no more than N handlers ever ran at the same time")
    parser.add_argument("--deps", action="store_true",
                        help="submit (dependency, dependent) pairs on different shards, and check "
                             "that no dependent ran before its dependency")
    args = parser.parse_args(argv)
    if args.shards < 2:
        parser.error("--shards must be 2 or more")
    rng = random.Random(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops everything

    from shardq.testing import ServerProcess
    with tempfile.TemporaryDirectory(prefix="shardq-chaos-") as tmp:
        marks = os.path.join(tmp, "marks")
        Path(marks).touch()
        server = ServerProcess(os.path.join(tmp, "data"), [
            "--shards", str(args.shards), "--sync", args.sync, "--lease-timeout-ms", "3000",
            "--heartbeat-interval-ms", "500"]).start()
        spans = os.path.join(tmp, "spans")
        if args.max_concurrency is not None:
            with shardq.Client(server.url) as admin:
                admin.set_limits("chaos", max_concurrency=args.max_concurrency)
            Path(spans).touch()
        env = dict(os.environ, SHARDQ_CHAOS_MARKS=marks, PYTHONPATH=os.pathsep.join(
            [str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        if args.max_concurrency is not None:
            env["SHARDQ_CHAOS_SPANS"] = spans
        def start_worker(k: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "shardq.worker", "chaos:app", "--server", server.url,
                 "--shard", str(k), "--concurrency", "8", "--heartbeat-interval-ms", "300",
                 "--log-level", "warning"],
                env=env, stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(tmp, f"worker-{k}.log"), "a"))

        workers = [start_worker(k) for k in range(args.shards)]
        producers = Producers(server.url, args.producers, args.shards, args.deps)
        try:
            producers.start()
            kills: Counter[str] = Counter()
            victims = [f"shard-{k}" for k in range(args.shards)] * 2 + ["acceptor", "coordinator"]
            if args.kill_workers:
                victims += [f"worker-{k}" for k in range(args.shards)]
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                time.sleep(rng.uniform(1.5, 4.0))
                name = rng.choice(victims)
                if name.startswith("worker-"):  # a worker dies mid-task; another takes its place
                    k = int(name.split("-")[1])
                    workers[k].kill()
                    workers[k].wait()
                    workers[k] = start_worker(k)
                    kills[name] += 1
                    continue
                pid = child_pids(server).get(name)
                try:
                    if pid:
                        os.kill(pid, signal.SIGKILL)
                        kills[name] += 1
                except ProcessLookupError:
                    pass
            producers.join()
            acked = list(producers.acked)
            print(f"{args.seconds:.0f} s, {args.shards} shards: killed {sum(kills.values())} "
                  f"processes ({', '.join(f'{n} {c}' for n, c in sorted(kills.items()))})")
            print(f"acknowledged tasks: {len(acked):,}; producer errors: {len(producers.errors)}"
                  + (f" (first: {producers.errors[0]})" if producers.errors else ""))
            missing, open_ = settle(server.url, acked, args.settle)
            print(f"missing from the broker: {len(missing)}; not completed after settling: {len(open_)}"
                  + (f" (first: {open_[:3]})" if open_ else ""))
            runs: Counter[str] = Counter()
            first_run: dict[str, float] = {}
            for line in Path(marks).read_text().splitlines():
                tid, when = line.split()
                runs[tid] += 1
                first_run[tid] = min(first_run.get(tid, float("inf")), float(when))
            never = len(set(acked) - runs.keys())
            print(f"handler runs: {sum(runs.values()):,} for {len(runs):,} tasks; run more than once: "
                  f"{sum(1 for n in runs.values() if n > 1)}; acknowledged but never run: {never}")
            early = 0
            if args.deps:
                early = sum(1 for parent, child in producers.pairs
                            if child in first_run and first_run[child] < first_run.get(parent, float("inf")))
                print(f"dependency pairs across shards: {len(producers.pairs):,}; "
                      f"dependents that ran before their dependency: {early}")
            over = 0
            if args.max_concurrency is not None:
                peak = peak_overlap(spans)
                over = int(peak > args.max_concurrency)
                print(f"concurrency cap {args.max_concurrency}: at most {peak} handlers ran at once"
                      + (" -- EXCEEDED" if over else ""))
            if os.environ.get("SHARDQ_CHAOS_LOG"):
                Path(os.environ["SHARDQ_CHAOS_LOG"]).write_text(
                    "".join(server.stderr_lines) + "\n".join(producers.errors) + "\n")
            return 0 if not missing and not open_ and not never and not early and not over else 1
        finally:
            producers.stop.set()
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(20)
                except subprocess.TimeoutExpired:
                    w.kill()
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
