"""HTTP submit vs the TCP protocol's batched submit, against one fresh server, in one run.

    PYTHONPATH=. python loadtests/http_bench.py --shards 2 --seconds 5 --clients 8

Three phases of ``--seconds`` each, ``--clients`` concurrent keep-alive clients each:
``http_submit_1`` (POST /api/v1/tasks, one task a request), ``http_submit_batch_100``
(POST /api/v1/tasks/batch, 100 tasks a request) and ``tcp_submit_batch_100`` (shardq.AsyncClient
submit_many, 100 tasks a request). Payloads are 64 bytes of JSON. Prints tasks/s for each and the
ratio of batched HTTP to batched TCP. Bounded: each phase stops after --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import aiohttp

from shardq.client.aio import AsyncClient
from shardq.client.models import Job
from shardq.testing import ServerProcess

PAYLOAD = {"user": 12345, "action": "send-welcome-email", "pad": "x" * 16}


async def _http(url: str, batch: int, seconds: float, clients: int) -> int:
    body = {"tasks": [{"type": "bench", "payload": PAYLOAD} for _ in range(batch)]} if batch > 1 else \
        {"type": "bench", "payload": PAYLOAD}
    path = "/api/v1/tasks/batch" if batch > 1 else "/api/v1/tasks"
    done = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        async with aiohttp.ClientSession(url) as session:  # one keep-alive connection each
            while time.monotonic() < deadline:
                async with session.post(path, json=body) as resp:
                    assert resp.status == 201, await resp.text()
                    await resp.read()
                done += batch
    await asyncio.gather(*(one() for _ in range(clients)))
    return done


async def _tcp(url: str, batch: int, seconds: float, clients: int) -> int:
    jobs = [Job("bench", PAYLOAD) for _ in range(batch)]
    done = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        async with AsyncClient(url) as client:
            while time.monotonic() < deadline:
                await client.submit_many(jobs)
                done += batch
    await asyncio.gather(*(one() for _ in range(clients)))
    return done


async def main(args: argparse.Namespace, srv: ServerProcess) -> None:
    rates = {}
    for name, run, batch in (("http_submit_1", _http, 1), ("http_submit_batch_100", _http, 100),
                             ("tcp_submit_batch_100", _tcp, 100)):
        url = srv.http_url if run is _http else srv.url
        t0 = time.monotonic()
        n = await run(url, batch, args.seconds, args.clients)
        rates[name] = n / (time.monotonic() - t0)
        print(f"{name:24s} {rates[name]:>10,.0f} tasks/s  ({n} tasks, {args.clients} clients)", flush=True)
    ratio = rates["http_submit_batch_100"] / rates["tcp_submit_batch_100"]
    print(f"http batched / tcp batched = {ratio:.2f} (target >= 0.5)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--sync", default="interval")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        server = ServerProcess(d, ["--shards", str(a.shards), "--sync", a.sync,
                                   "--queue-depth-threshold", "100000000"]).start()
        try:
            asyncio.run(main(a, server))
        finally:
            server.stop()
