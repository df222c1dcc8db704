"""The gRPC API against the TCP protocol in the same run: batched submit, one task a call, and the
full lifecycle (submit, claim, result), on one fresh server.

    PYTHONPATH=$PWD python loadtests/grpc_bench.py --shards 2 --seconds 5 --clients 8 --tasks 20000

Phases, each on its own task type so that none sees another's tasks:
- submit phases run ``--clients`` concurrent callers for ``--seconds``: ``tcp_submit_batch_100``
  (AsyncClient.submit_many), ``grpc_submit_batch_100`` (Tasks.SubmitBatch), ``grpc_submit_1``
  (Tasks.Submit);
- lifecycle phases put ``--tasks`` tasks through submit (batches of 100), claim and result with
  ``--clients`` workers: ``tcp_lifecycle`` (AsyncClient: claim max 32, one RESULT per claim),
  ``tcp_lifecycle_one_lane`` (a spread=False client, one connection, per producer and per worker,
  each on the shard the acceptor picked: claims of work another shard holds, and their RESULTs,
  cross the shard mesh; what a gRPC server per shard behind SO_REUSEPORT would cost, where the
  kernel, not the task id, picks each connection's shard),
  ``grpc_lifecycle`` (Workers.Claim max 32 + ReportResults) and ``grpc_lifecycle_stream``
  (Workers.ClaimStream with max_in_flight 64, ReportResults in batches of up to 32).
Each phase also reports the CPU microseconds per task of the broker's processes, of the gateway,
and of this process (the clients), and each lifecycle phase the requests the shards forwarded to
each other during it, per 100 tasks (GET_STATS ``forwarded``): the hops. The clients share one event loop in this process,
on the same machine as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable

import grpc
import psutil
import uvloop

from shardq.client.aio import AsyncClient
from shardq.client.models import Job
from shardq.testing import ServerProcess
from shardq.v1 import task_pb2, tasks_pb2, tasks_pb2_grpc, workers_pb2, workers_pb2_grpc

PAYLOAD = b'{"to":"ada@example.com","subject":"hello","n":12345}'


async def timed(seconds: float, clients: int, call: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    """(tasks/s, tasks) of ``clients`` callers looping ``call`` (it returns how many tasks it did)."""
    stop = time.monotonic() + seconds
    done = [0] * clients

    async def loop(i: int) -> None:
        while time.monotonic() < stop:
            done[i] += await call()

    started = time.monotonic()
    await asyncio.gather(*(loop(i) for i in range(clients)))
    return sum(done) / (time.monotonic() - started), sum(done)


def specs(type: str, n: int) -> list[task_pb2.TaskSpec]:
    return [task_pb2.TaskSpec(type=type, payload=PAYLOAD) for _ in range(n)]


class Cpu:
    """CPU seconds used by the server's processes (the gateway apart) and by this one (the clients)."""

    def __init__(self, server_pid: int) -> None:
        kids = psutil.Process(server_pid).children()
        self.gateway = [p for p in kids if "grpc" in " ".join(p.cmdline())]
        self.broker = [p for p in kids if p not in self.gateway]
        self.me = psutil.Process()

    def now(self) -> tuple[float, float, float]:
        def used(ps: list[psutil.Process]) -> float:
            return sum(sum(p.cpu_times()[:2]) for p in ps)
        return used(self.broker), used(self.gateway), used([self.me])


async def measured(out: dict[str, float], name: str, cpu: Cpu, phase: Callable[[], Awaitable[tuple[float, int]]]) -> None:
    """Run ``phase`` (it returns (tasks/s, tasks)); record its rate and CPU microseconds per task."""
    before = cpu.now()
    rate, tasks = await phase()
    after = cpu.now()
    out[name] = rate
    for label, b, a in zip(("broker", "gateway", "client"), before, after):
        out[f"{name}_{label}_cpu_us"] = (a - b) * 1e6 / max(1, tasks)


async def submit_phases(url: str, target: str, args: argparse.Namespace, cpu: Cpu) -> dict[str, float]:
    out: dict[str, float] = {}
    tcp = AsyncClient(url)
    jobs = [Job("s.tcp", PAYLOAD) for _ in range(100)]
    await measured(out, "tcp_submit_batch_100", cpu,
                   lambda: timed(args.seconds, args.clients, lambda: _n(tcp.submit_many(jobs))))
    await tcp.close()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = tasks_pb2_grpc.TasksStub(channel)
        batch = tasks_pb2.SubmitBatchRequest(tasks=specs("s.grpc", 100))
        await measured(out, "grpc_submit_batch_100", cpu,
                       lambda: timed(args.seconds, args.clients, lambda: _n_ids(stub.SubmitBatch(batch))))
        one = tasks_pb2.SubmitRequest(task=specs("s.grpc1", 1)[0])
        await measured(out, "grpc_submit_1", cpu,
                       lambda: timed(args.seconds, args.clients, lambda: _one(stub.Submit(one))))
    return out


async def _n(call: Awaitable[list[str]]) -> int:
    return len(await call)


async def _n_ids(call: Awaitable[tasks_pb2.SubmitBatchResponse]) -> int:
    return len((await call).ids)


async def _one(call: Awaitable[object]) -> int:
    await call
    return 1


async def tcp_lifecycle(url: str, type: str, args: argparse.Namespace, spread: bool) -> float:
    # spread: one client, a lane per shard. Not: a client (one connection) per producer and per
    # worker, each on the shard the acceptor picks, as a kernel would under SO_REUSEPORT.
    shared = AsyncClient(url, spread=True) if spread else None
    clients = [shared or AsyncClient(url, spread=False) for _ in range(2 + args.clients)]
    started = time.monotonic()
    left = args.tasks
    done = 0

    async def produce(i: int) -> None:
        nonlocal left
        client = clients[args.clients + i]
        while left > 0:
            n = min(100, left)
            left -= n
            await client.submit_many([Job(type, PAYLOAD) for _ in range(n)])

    async def work(i: int) -> None:
        nonlocal done
        client = clients[i]
        while done < args.tasks:
            tasks = await client.claim(f"tw-{type}-{i}", max=32, wait=0.2, types=[type])
            if tasks:
                await client.report(f"tw-{type}-{i}", [(  # completed, empty result
                    {"id": t.id, "attempt": t.attempt, "status": "completed"}, b"") for t in tasks])
                done += len(tasks)

    await asyncio.gather(*(produce(i) for i in range(2)), *(work(i) for i in range(args.clients)))
    rate = args.tasks / (time.monotonic() - started)
    for client in set(clients):
        await client.close()
    return rate


async def grpc_lifecycle(target: str, type: str, args: argparse.Namespace, stream: bool) -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        tasks_stub, workers_stub = tasks_pb2_grpc.TasksStub(channel), workers_pb2_grpc.WorkersStub(channel)
        started = time.monotonic()
        left = args.tasks
        done = 0
        finished = asyncio.Event()

        async def produce() -> None:
            nonlocal left
            while left > 0:
                n = min(100, left)
                left -= n
                await tasks_stub.SubmitBatch(tasks_pb2.SubmitBatchRequest(tasks=specs(type, n)))

        async def report(worker: str, got: list[workers_pb2.ClaimedTask]) -> None:
            nonlocal done
            await workers_stub.ReportResults(workers_pb2.ReportResultsRequest(worker_id=worker, results=[
                workers_pb2.TaskResult(id=c.task.id, attempt=c.task.attempt, completed=b"") for c in got]))
            done += len(got)
            if done >= args.tasks:
                finished.set()

        async def work(i: int) -> None:
            worker = f"gw-{type}-{i}"
            while done < args.tasks:
                got = (await workers_stub.Claim(workers_pb2.ClaimRequest(
                    worker_id=worker, max=32, wait_ms=200, types=[type]))).tasks
                if got:
                    await report(worker, list(got))

        async def streamed(i: int) -> None:
            worker = f"gs-{type}-{i}"
            call = workers_stub.ClaimStream(workers_pb2.ClaimStreamRequest(worker_id=worker, max_in_flight=64,
                                                                          types=[type]))
            queue: asyncio.Queue[workers_pb2.ClaimedTask] = asyncio.Queue()

            async def read() -> None:
                async for message in call:
                    for item in message.tasks:
                        queue.put_nowait(item)

            reader = asyncio.ensure_future(read())
            while not finished.is_set():
                first = await _next(queue, finished)
                if first is None:
                    break
                batch = [first]
                while len(batch) < 32 and not queue.empty():
                    batch.append(queue.get_nowait())
                await report(worker, batch)
            call.cancel()
            reader.cancel()

        workers = [streamed(i) if stream else work(i) for i in range(args.clients)]
        await asyncio.gather(*(produce() for _ in range(2)), *workers)
        return args.tasks / (time.monotonic() - started)


async def _next(queue: asyncio.Queue, finished: asyncio.Event):  # type: ignore[no-untyped-def]
    getter = asyncio.ensure_future(queue.get())
    waiter = asyncio.ensure_future(finished.wait())
    await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if getter.done():
        return getter.result()
    getter.cancel()
    return None


async def _with_count(rate: Awaitable[float], tasks: int) -> tuple[float, int]:
    return await rate, tasks


async def hops(url: str) -> int:
    """Requests forwarded between shards so far (GET_STATS ``forwarded`` of every shard)."""
    async with AsyncClient(url, spread=False) as client:
        return sum(int(s.get("forwarded", 0)) for s in (await client.stats())["shards"])


async def main(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        srv = ServerProcess(tmp, ["--shards", str(args.shards), "--grpc-port", "0",
                                  "--queue-depth-threshold", "10000000"]).start()
        try:
            url, target = srv.url, f"127.0.0.1:{srv.ready_fields['grpc_port']}"
            async with grpc.aio.insecure_channel(target) as channel:  # the gateway sees every shard
                await channel.channel_ready()
            cpu = Cpu(srv.pid)
            out = await submit_phases(url, target, args, cpu)
            phases = {
                "tcp_lifecycle": lambda: tcp_lifecycle(url, "l.tcp", args, spread=True),
                "tcp_lifecycle_one_lane": lambda: tcp_lifecycle(url, "l.tcp1", args, spread=False),
                "grpc_lifecycle": lambda: grpc_lifecycle(target, "l.grpc", args, stream=False),
                "grpc_lifecycle_stream": lambda: grpc_lifecycle(target, "l.grpcs", args, stream=True),
            }
            for name, phase in phases.items():
                before = await hops(url)
                await measured(out, name, cpu, lambda p=phase: _with_count(p(), args.tasks))
                # Requests the shards forwarded to each other, per 100 tasks.
                out[name + "_hops_per_100"] = (await hops(url) - before) * 100 / args.tasks
            return out
        finally:
            srv.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = uvloop.run(main(args))
    if args.json:
        print(json.dumps(result))
    else:
        for name, rate in result.items():
            unit = ("hops per 100 tasks" if name.endswith("_hops_per_100")
                    else "CPU us per task" if name.endswith("_cpu_us") else "tasks/s")
            print(f"{name:36s} {rate:12,.1f} {unit}")
