"""End-to-end throughput of ``shardq worker`` with a no-op handler.

    python loadtests/bench_worker.py --tasks 20000                 # concurrency 1 and 4, sync handler
    python loadtests/bench_worker.py --tasks 20000 --handler async --concurrency 1,4,16

For each concurrency: start from an empty queue, fill it with N no-op tasks (100-byte payloads,
pipelined SUBMITs of 1000; not timed), then run ``python -m shardq.worker bench_worker:app
--burst --concurrency C`` and wait for it to exit. It claims, runs, reports and exits once the
queue is empty. Reported:

- ``tasks/s``: N / (the broker's ACK of the last RESULT - the worker's "ready" line), both read
  from the worker's own log (ms timestamps): claim + handler + result, start-up excluded;
- ``wall tasks/s``: N / (spawn -> exit), which adds interpreter start-up, connecting and the drain;
- the worker's CPU seconds (user + system, from its rusage);
- ``floor tasks/s``: the same N tasks through a bare protocol loop in this process, which claims
  ``max=C`` and completes each batch with one RESULT sent together with the next CLAIM (no
  handler, no threads, no logging): what the broker allows a worker that never holds more than C
  leases. ``--no-floor`` skips it.

``--spread`` (with ``--shards S`` > 1): the N tasks are submitted evenly on every shard (a client
pinned to each through the HELLO hint), and S workers run at once, each with ``--concurrency C``;
with ``--pin`` worker k runs with ``--shard k``, without it the acceptor places them. Reported: the
tasks/s of the whole drain (first "ready" to last completion), and the cross-shard hops (requests a
shard forwarded to another, GET_STATS ``forwarded``) per task. HEARTBEATs always reach every shard,
so a few hops remain even when pinned.

``--tls``: the server speaks TLS only (trustme certificates made for the run), every client and
worker connects with ``shardqs://`` and trusts that CA (SHARDQ_TLS_CA); ``--pin`` then reaches
shard k through the ClientHello's ALPN offer instead of the HELLO hint (docs/architecture.md).

The server (``shardq serve --shards S``, its own temp data dir) and the worker share this
machine's cores; every task must end ``completed`` or the run fails. The handler is
``bench_worker:app`` below, so the worker imports this file (with ``loadtests/`` on its path).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import shardq  # noqa: E402 -- after the path fix, so that the checkout is what runs

app = shardq.App()


@app.task("noop")
def noop(ctx: shardq.worker.TaskContext) -> None:
    return None


@app.task("anoop")
async def anoop(ctx: shardq.worker.TaskContext) -> None:
    return None


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _when(line: str) -> float:
    m = _STAMP.match(line)
    if not m:
        raise ValueError(f"no timestamp in log line: {line!r}")
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


TLS_CA: str | None = None  # --tls: the CA file every client and worker trusts


def open_client(url: str, **kw) -> shardq.Client:  # type: ignore[no-untyped-def]
    return shardq.Client(url, tls_ca=TLS_CA, **kw) if TLS_CA else shardq.Client(url, **kw)


def worker_env() -> dict[str, str]:
    """The environment for ``python -m shardq.worker bench_worker:app``: this file and the
    checkout importable (and, with --tls, the CA to trust)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    if TLS_CA:
        env["SHARDQ_TLS_CA"] = TLS_CA
    return env


def tls_server_env(dir: str) -> dict[str, str]:
    """--tls: certificates for 127.0.0.1 signed by a fresh CA; sets TLS_CA."""
    global TLS_CA
    import trustme
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    TLS_CA = os.path.join(dir, "ca.pem")
    ca.cert_pem.write_to_path(TLS_CA)
    os.environ["SHARDQ_TLS_CA"] = TLS_CA  # for Connection.from_url (the floor loop)
    leaf.cert_chain_pems[0].write_to_path(os.path.join(dir, "server.crt"))
    leaf.private_key_pem.write_to_path(os.path.join(dir, "server.key"))
    return {"SHARDQ_API__TLS_ENABLED": "true", "SHARDQ_API__TLS_CERT_FILE": os.path.join(dir, "server.crt"),
            "SHARDQ_API__TLS_KEY_FILE": os.path.join(dir, "server.key")}


def fill(client: shardq.Client, task_type: str, n: int) -> float:
    from shardq.client.models import Job
    t0 = time.perf_counter()
    payload = b"x" * 100
    for start in range(0, n, 1000):
        client.submit_many([Job(task_type, payload) for _ in range(min(1000, n - start))])
    return time.perf_counter() - t0


def floor(url: str, task_type: str, n: int, concurrency: int) -> float:
    """N tasks claimed C at a time, each batch completed by one RESULT pipelined with the next CLAIM."""
    from shardq.client.connection import Connection
    from shardq.protocol.frames import MsgType
    client = open_client(url)
    fill(client, task_type, n)
    client.close()
    conn = Connection.from_url(url)
    done, pending = 0, []
    t0 = time.perf_counter()
    while True:
        rid = None
        if pending:
            rid = conn.send(MsgType.RESULT, {"worker_id": "floor", "results": [
                {"id": t["id"], "attempt": t["attempt"], "status": "completed", "result_len": 0}
                for t in pending]})
        claim = conn.send(MsgType.CLAIM, {"worker_id": "floor", "max": concurrency, "wait_ms": 0,
                                          "types": [task_type]})
        if rid is not None:
            conn.wait_for(rid)
            done += len(pending)
        pending = conn.wait_for(claim).header["tasks"]
        if not pending:
            break
    elapsed = time.perf_counter() - t0
    conn.close()
    if done != n:
        raise SystemExit(f"floor loop completed {done} of {n}")
    return n / elapsed


WORKER_ARGS: list[str] = []  # --prefetch N, --no-spread: passed to every worker


def run_one(url: str, task_type: str, n: int, concurrency: int, pool: str, log_dir: str) -> dict:
    client = open_client(url)
    before = client.stats()["totals"]["completed"]
    fill_s = fill(client, task_type, n)
    log_path = os.path.join(log_dir, f"worker-c{concurrency}.log")
    env = worker_env()
    cmd = [sys.executable, "-m", "shardq.worker", "bench_worker:app", "--server", url, "--burst",
           "--concurrency", str(concurrency), "--pool", pool, "--types", task_type, *WORKER_ARGS]
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        t0 = time.time()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env, timeout=600)
        wall = time.time() - t0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = Path(log_path).read_text().splitlines()
    if proc.returncode != 0:
        raise SystemExit(f"worker exited {proc.returncode}:\n" + "\n".join(lines[-20:]))
    ready = next(_when(x) for x in lines if " ready: " in x)
    task_lines = [x for x in lines if " completed in " in x]
    done = client.stats()["totals"]["completed"] - before
    if len(task_lines) != n or done != n:
        raise SystemExit(f"expected {n} completions, the log has {len(task_lines)} and the broker "
                         f"counts {done}")
    last = _when(task_lines[-1])
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    client.close()
    return {"concurrency": concurrency, "tasks": n, "fill_s": fill_s, "run_s": last - ready,
            "tasks_per_s": n / max(last - ready, 1e-3), "wall_s": wall, "wall_tasks_per_s": n / wall,
            "worker_cpu_s": cpu, "command": " ".join(cmd[1:])}


def _forwarded(client: shardq.Client) -> int:
    return sum(int(r.get("forwarded") or 0) for r in client.stats()["shards"])


def run_spread(url: str, shards: int, task_type: str, n: int, concurrency: int, pool: str,
               pin: bool, log_dir: str) -> dict:
    """N tasks spread evenly over the shards, drained by one worker per shard at once."""
    share = [n // shards + (1 if k < n % shards else 0) for k in range(shards)]
    for k in range(shards):
        with open_client(url, shard=k) as producer:
            fill(producer, task_type, share[k])
    client = open_client(url)
    before_done, before_hops = client.stats()["totals"]["completed"], _forwarded(client)
    env = worker_env()
    procs, logs = [], []
    for k in range(shards):
        cmd = [sys.executable, "-m", "shardq.worker", "bench_worker:app", "--server", url, "--burst",
               "--concurrency", str(concurrency), "--pool", pool, "--types", task_type,
               "--heartbeat-interval-ms", "1000", *WORKER_ARGS]
        if pin:
            cmd += ["--shard", str(k)]
        log_path = os.path.join(log_dir, f"worker-spread-{k}.log")
        logs.append(log_path)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), env=env))
    for proc in procs:
        if proc.wait(timeout=600) != 0:
            raise SystemExit(f"a worker exited {proc.returncode}: see {logs}")
    lines = [x for path in logs for x in Path(path).read_text().splitlines()]
    ready = min(_when(x) for x in lines if " ready: " in x)
    last = max(_when(x) for x in lines if " completed in " in x)
    done = client.stats()["totals"]["completed"] - before_done
    hops = _forwarded(client) - before_hops
    client.close()
    if done != n:
        raise SystemExit(f"expected {n} completions, the broker counts {done}")
    return {"tasks_per_s": n / max(last - ready, 1e-3), "run_s": last - ready, "hops": hops,
            "hops_per_task": hops / n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--concurrency", default="1,4", help="comma-separated (default 1,4)")
    parser.add_argument("--handler", choices=("sync", "async"), default="sync")
    parser.add_argument("--pool", choices=("thread", "process"), default="thread")
    parser.add_argument("--shards", default="1")
    parser.add_argument("--repeat", type=int, default=1, help="runs per concurrency (all printed)")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare protocol loop")
    parser.add_argument("--spread", action="store_true",
                        help="tasks on every shard, one worker per shard at once (needs --shards > 1)")
    parser.add_argument("--pin", action="store_true", help="with --spread: worker k runs with --shard k")
    parser.add_argument("--tls", action="store_true", help="the server speaks TLS only (shardqs://)")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="the workers' --prefetch (default: theirs; a worker of a shardq "
                             "without that flag needs it left out)")
    parser.add_argument("--no-spread", action="store_true",
                        help="the workers' --no-spread: one connection each, no lanes")
    args = parser.parse_args(argv)
    if args.prefetch is not None:
        WORKER_ARGS.extend(["--prefetch", str(args.prefetch)])
    if args.no_spread:
        WORKER_ARGS.append("--no-spread")
    if args.spread and int(args.shards) < 2:
        parser.error("--spread needs --shards 2 or more")
    if args.pin and not args.spread:
        parser.error("--pin goes with --spread")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the server

    from shardq.testing import ServerProcess
    task_type = "noop" if args.handler == "sync" else "anoop"
    with tempfile.TemporaryDirectory(prefix="shardq-bench-worker-") as tmp:
        env = tls_server_env(tmp) if args.tls else None
        srv = ServerProcess(os.path.join(tmp, "data"), ["--shards", args.shards], env=env).start()
        url = srv.url.replace("shardq://", "shardqs://") if args.tls else srv.url
        try:
            if args.spread:
                shards = int(args.shards)
                print(f"server {url} (--shards {shards}); {args.tasks} {args.handler} no-op tasks "
                      f"spread over the shards, {shards} workers {'pinned (--shard k)' if args.pin else 'placed by the acceptor'}")
                print(f"{'concurrency':>11} | {'tasks/s':>9} | {'run s':>6} | {'hops':>6} | {'hops/task':>9}")
                for c in (int(x) for x in args.concurrency.split(",")):
                    for _ in range(args.repeat):
                        r = run_spread(url, shards, task_type, args.tasks, c, args.pool, args.pin, tmp)
                        print(f"{c:>11} | {r['tasks_per_s']:>9,.0f} | {r['run_s']:>6.2f} | "
                              f"{r['hops']:>6,} | {r['hops_per_task']:>9.4f}", flush=True)
                return 0
            print(f"server {url} (--shards {args.shards}); {args.tasks} {args.handler} no-op tasks "
                  f"per run, {args.pool} pool; {os.cpu_count()} CPUs")
            print(f"{'concurrency':>11} | {'tasks/s':>9} | {'run s':>6} | {'wall tasks/s':>12} | "
                  f"{'wall s':>6} | {'worker CPU s':>12} | {'floor tasks/s':>13}")
            for c in (int(x) for x in args.concurrency.split(",")):
                for _ in range(args.repeat):
                    r = run_one(url, task_type, args.tasks, c, args.pool, tmp)
                    bare = "-" if args.no_floor else f"{floor(url, task_type, args.tasks, c):,.0f}"
                    print(f"{c:>11} | {r['tasks_per_s']:>9,.0f} | {r['run_s']:>6.2f} | "
                          f"{r['wall_tasks_per_s']:>12,.0f} | {r['wall_s']:>6.2f} | "
                          f"{r['worker_cpu_s']:>12.2f} | {bare:>13}", flush=True)
        finally:
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
