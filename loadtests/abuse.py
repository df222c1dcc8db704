"""Misbehaving clients against a real server: what they cost the shard, and a good client's PINGs.

    python loadtests/abuse.py non-reader [--code DIR ...]
    python loadtests/abuse.py half-sent  [--code DIR ...]
    python loadtests/abuse.py idle-busy  [--code DIR ...]

Each ``--code`` is a source tree whose ``shardq`` the server runs (default: this checkout), so
the code before a fix and after it are measured in one run, one after the other:
``git worktree add /tmp/base <commit>`` (or ``git archive <commit> | tar -x -C /tmp/base``), then
``--code /tmp/base --code .``. Every scenario is bounded in time and loopback only.

non-reader  2 shards, 5,000 pending; 4 connections (4 KiB receive buffer) pinned to shard 0 each
            pipeline 1,000 x LIST_TASKS {"status": "pending", "limit": 1000} and never read.
half-sent   2 shards; 20 connections each send a 16 MiB frame but for its last byte and hold on.
            Both print the RSS of each shard before / peak during / 2 s after the abusers close,
            and the PING latency of a well-behaved client on shard 0 meanwhile.
idle-busy   --connection-timeout-ms 1000: one SUBMIT of 100,000 tasks in one frame; a GET_STATS in
            flight while shard 1 is stopped (SIGSTOP) for 2.5 s. With 3000 ms: 20,000 pipelined
            SUBMITs not read for 4 s. Prints whether each got its answers.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shardq.client.connection import Connection, ConnectionClosed  # noqa: E402
from shardq.protocol.frames import MAX_FRAME, MsgType, encode  # noqa: E402
from shardq.testing import ServerProcess  # noqa: E402

MiB = 2**20


def start(code: str, data: str, *args: str) -> ServerProcess:
    """A server running the ``shardq`` of ``code`` (``python -m`` puts the working dir first)."""
    here = os.getcwd()
    os.chdir(code)
    try:
        return ServerProcess(data, ["--shards", "2", *args], env={"PYTHONPATH": os.path.abspath(code)}).start()
    finally:
        os.chdir(here)


def pids(srv: ServerProcess) -> list[int]:
    with srv.connect(timeout=10) as c:
        rows = c.call(MsgType.GET_STATS, {}).header["shards"]
    return [r["pid"] for r in sorted(rows, key=lambda r: r["shard"])]


def rss_mib(pid_list: list[int]) -> list[int]:
    return [round(psutil.Process(p).memory_info().rss / MiB) for p in pid_list]


def raw(srv: ServerProcess, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((srv.host, srv.port))
    return s


def pusher(socks: list[socket.socket], data: list[bytes], stop: threading.Event) -> threading.Thread:
    """Send each socket its bytes, as fast as the server takes them, never reading."""
    def run() -> None:
        sent = [0] * len(socks)
        for s in socks:
            s.setblocking(False)
        while not stop.is_set() and any(n < len(d) for n, d in zip(sent, data)):
            _, ready, _ = select.select([], [s for s, n, d in zip(socks, sent, data) if n < len(d)], [], 0.05)
            for s in ready:
                i = socks.index(s)
                try:
                    sent[i] += s.send(memoryview(data[i])[sent[i]:sent[i] + MiB])
                except (BlockingIOError, OSError):
                    pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class Pinger:
    """A well-behaved client on shard 0: one PING every 10 ms, latencies in ms (timeouts: 5 s)."""

    def __init__(self, srv: ServerProcess) -> None:
        self.conn = srv.connect(timeout=5)
        self.conn.call(MsgType.HELLO, {"client": "abuse/pinger", "protocol": 1, "shard": 0})
        self.lat: list[float] = []
        self.timeouts = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                self.conn.call(MsgType.PING, {})
            except (TimeoutError, ConnectionClosed):
                self.timeouts += 1
                return
            self.lat.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.01)

    def summary(self) -> str:
        self.stop.set()
        self.thread.join(10)
        self.conn.close()
        lat = sorted(self.lat) or [float("nan")]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return (f"PING n={len(self.lat)} p50={statistics.median(lat):.2f} ms p99={p99:.2f} ms "
                f"max={lat[-1]:.1f} ms timeouts={self.timeouts}")


def abuse(code: str, seconds: float, socks_data: Any, setup: Any = None) -> None:
    with tempfile.TemporaryDirectory() as d:
        srv = start(code, d)
        try:
            if setup is not None:
                setup(srv)
            shard_pids = pids(srv)
            time.sleep(0.5)
            before = rss_mib(shard_pids)
            pinger = Pinger(srv)
            socks, data = socks_data(srv)
            stop = threading.Event()
            t = pusher(socks, data, stop)
            peak = before
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                peak = [max(a, b) for a, b in zip(peak, rss_mib(shard_pids))]
                time.sleep(0.1)
            ping = pinger.summary()
            stop.set()
            t.join(5)
            for s in socks:
                s.close()
            time.sleep(2.0)
            after = rss_mib(shard_pids)
            print(f"  RSS MiB per shard: before {before} peak {peak} after {after}; {ping}", flush=True)
        finally:
            srv.kill()


def non_reader(code: str, seconds: float) -> None:
    def setup(srv: ServerProcess) -> None:
        with srv.connect(timeout=60) as c:
            for _ in range(5):
                c.call(MsgType.SUBMIT, {"tasks": [{"type": "t", "payload_len": 0}] * 1000})

    def socks_data(srv: ServerProcess) -> tuple[list[socket.socket], list[bytes]]:
        hello = encode(MsgType.HELLO, {"rid": 0, "protocol": 1, "shard": 0})
        reqs = b"".join(encode(MsgType.LIST_TASKS, {"rid": i, "status": "pending", "limit": 1000})
                        for i in range(1, 1001))
        socks = [raw(srv, rcvbuf=4096) for _ in range(4)]
        return socks, [hello + reqs] * 4

    abuse(code, seconds, socks_data, setup)


def half_sent(code: str, seconds: float) -> None:
    frame = struct.pack(">IB", MAX_FRAME, MsgType.SUBMIT) + bytes(MAX_FRAME - 2)  # all but the last byte

    def socks_data(srv: ServerProcess) -> tuple[list[socket.socket], list[bytes]]:
        socks = [raw(srv) for _ in range(20)]
        return socks, [frame] * 20

    abuse(code, seconds, socks_data)


def idle_busy(code: str, _seconds: float) -> None:
    with tempfile.TemporaryDirectory() as d:
        srv = start(code, d, "--connection-timeout-ms", "1000")
        try:
            with srv.connect(timeout=120) as c:
                try:
                    ack = c.call(MsgType.SUBMIT, {"tasks": [{"type": "big", "payload_len": 0}] * 100_000})
                    print(f"  SUBMIT 100,000 in one frame: {ack.type.name} {len(ack.header.get('ids', []))} ids")
                except ConnectionClosed:
                    print("  SUBMIT 100,000 in one frame: closed without its ACK")
            other = pids(srv)[1]
            c = srv.connect(timeout=30)
            c.call(MsgType.HELLO, {"protocol": 1, "shard": 0})
            os.kill(other, signal.SIGSTOP)
            try:
                rid = c.send(MsgType.GET_STATS, {})
                time.sleep(2.5)
            finally:
                os.kill(other, signal.SIGCONT)
            try:
                msg = c.wait_for(rid)
                print(f"  GET_STATS in flight 2.5 s (shard 1 stopped): {msg.type.name}")
            except ConnectionClosed:
                print("  GET_STATS in flight 2.5 s (shard 1 stopped): closed without its answer")
            c.close()
        finally:
            srv.kill()
    with tempfile.TemporaryDirectory() as d:
        srv = start(code, d, "--connection-timeout-ms", "3000")
        try:
            n = 20_000
            s = raw(srv, rcvbuf=4096)
            frames = b"".join(encode(MsgType.SUBMIT, {"rid": i, "tasks": [{"type": "p", "payload_len": 1024}]},
                                     b"x" * 1024) for i in range(n))
            stop = threading.Event()
            t = pusher([s], [frames], stop)
            time.sleep(4.0)
            stop.set()
            t.join(5)
            conn = Connection.__new__(Connection)
            conn.sock = s
            from shardq.protocol.frames import RESPONSE_TYPES, FrameDecoder
            conn.decoder = FrameDecoder(accept=RESPONSE_TYPES)
            s.setblocking(True)
            s.settimeout(10)
            acks = 0
            try:
                while acks < n:
                    data = s.recv(1 << 20)
                    if not data:
                        break
                    conn.decoder.feed(data)
                    while conn.decoder.next() is not None:
                        acks += 1
            except (TimeoutError, ConnectionResetError):
                pass
            s.close()
            with srv.connect(timeout=10) as c:
                stored = c.call(MsgType.GET_STATS, {}).header["totals"]["pending"]
            print(f"  20,000 pipelined SUBMITs, unread 4 s (timeout 3 s): {acks} ACKs, {stored} stored")
        finally:
            srv.kill()


SCENARIOS = {"non-reader": non_reader, "half-sent": half_sent, "idle-busy": idle_busy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--code", action="append", help="source tree the server runs (repeatable)")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the abuse lasts")
    args = ap.parse_args()
    for code in args.code or ["."]:
        print(f"{args.scenario} with the server from {code}:", flush=True)
        SCENARIOS[args.scenario](code, args.seconds)


if __name__ == "__main__":
    main()
