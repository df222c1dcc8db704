"""Connection flood: max_connections under 10x its number of connectors, held open.

    python loadtests/conn_flood.py --shards 2 --max-connections 100 --connectors 1000 --parallel 1 20

Each connector opens a TCP connection, sends one PING and reads the first answer (at once, or
with --burst only after every connection of its thread is open): an ACK
(served), the contract's NACK "too many connections" (refused), or anything else (other: an
EOF without a NACK, a timeout). Every connection is kept open until the flood ends, so
``served`` is the number the server held at once, which must not exceed --max-connections.
--parallel N runs the connectors from N threads at once; each value is one run on a fresh
server. Meanwhile one well-behaved client, connected before the flood, PINGs in a loop and
records its round trips. After the flood all connections close and the script checks that a
new connection is served again (the slots came back).

Prints one JSON line per run: served/refused/other, the acceptor's and each shard's RSS
(MiB) before and at the end of the flood (its connections still open), the well-behaved
client's PING p50/p99/max (ms) in the second before the flood and during it, and how long the
flood took. Bounded: --connectors connections per run and a
--timeout per connection.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from typing import Any

import psutil

from shardq.protocol.frames import RESPONSE_TYPES, FrameDecoder, MsgType, encode
from shardq.testing import ServerProcess

PING = encode(MsgType.PING, {"rid": 1})


def first_answer(sock: socket.socket, timeout: float, sent: bool = False) -> str:
    """'served', 'refused' or 'other' for the first answer on ``sock`` to its PING."""
    decoder = FrameDecoder(RESPONSE_TYPES)
    sock.settimeout(timeout)
    try:
        if not sent:
            sock.sendall(PING)
        while True:
            data = sock.recv(65536)
            if not data:
                return "other"
            decoder.feed(data)
            msg = decoder.next()
            if msg is None:
                continue
            if msg.type == MsgType.ACK:
                return "served"
            err = (msg.header.get("error") or {}) if msg.type == MsgType.NACK else {}
            return "refused" if err.get("message") == "too many connections" else "other"
    except OSError:
        return "other"


def flood(port: int, connectors: int, parallel: int, timeout: float,
          burst: bool) -> tuple[dict[str, int], list[socket.socket]]:
    counts = {"served": 0, "refused": 0, "other": 0}
    held: list[socket.socket] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        mine: list[socket.socket] = []
        for _ in range(n):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            except OSError:
                with lock:
                    counts["other"] += 1
                continue
            mine.append(sock)
            if burst:
                sock.sendall(PING)  # the answer is read once every connection is open
            else:
                outcome = first_answer(sock, timeout)
                with lock:
                    counts[outcome] += 1
        if burst:
            for sock in mine:
                outcome = first_answer(sock, timeout, sent=True)
                with lock:
                    counts[outcome] += 1
        with lock:
            held.extend(mine)

    share = [connectors // parallel + (1 if i < connectors % parallel else 0) for i in range(parallel)]
    threads = [threading.Thread(target=run, args=(n,)) for n in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts, held


class Pinger(threading.Thread):
    """A well-behaved client: one connection, one PING at a time, round trips recorded."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert first_answer(self.sock, 10) == "served", "the well-behaved client was refused"
        self.rtts: list[tuple[float, float]] = []  # (sent at, round trip s)
        self.stop = threading.Event()

    def run(self) -> None:
        decoder = FrameDecoder(RESPONSE_TYPES)
        rid = 1
        while not self.stop.is_set():
            rid += 1
            t0 = time.perf_counter()
            self.sock.sendall(encode(MsgType.PING, {"rid": rid}))
            msg = None
            while msg is None:
                decoder.feed(self.sock.recv(65536))
                msg = decoder.next()
            self.rtts.append((t0, time.perf_counter() - t0))
            time.sleep(0.0005)  # one PING at a time, a short pause: a client, not a second flood

    def window(self, start: float, end: float) -> dict[str, float]:
        ms = [rtt * 1000 for at, rtt in self.rtts if start <= at < end]
        return {"n": len(ms), "p50": round(percentile(ms, 0.5), 2), "p99": round(percentile(ms, 0.99), 2),
                "max": round(max(ms, default=float("nan")), 2)}


def roles(pid: int) -> dict[str, psutil.Process]:
    out = {}
    for p in psutil.Process(pid).children(recursive=True):
        try:
            title = " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            continue
        if title.startswith("shardq: "):
            out[title.split()[1]] = p
    return out


def rss_mib(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, p in sorted(procs.items()):
        if name == "acceptor" or name.startswith("shard-"):
            try:
                out[name] = round(p.memory_info().rss / 2**20, 1)
            except psutil.NoSuchProcess:
                pass
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def readmitted(port: int, timeout: float, within: float = 5.0) -> bool:
    """A new connection is served again once the flood's connections closed."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            if first_answer(sock, timeout) == "served":
                return True
        time.sleep(0.05)
    return False


def one_run(args: argparse.Namespace, parallel: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="conn-flood-") as data:
        srv = ServerProcess(data, ["--shards", str(args.shards),
                                   "--max-connections", str(args.max_connections)]).start()
        try:
            procs = roles(srv.pid)
            before = rss_mib(procs)
            pinger = Pinger(srv.port)
            pinger.start()
            t_quiet = time.perf_counter()
            time.sleep(1.0)  # the baseline: the same client with no flood
            t0 = time.perf_counter()
            counts, held = flood(srv.port, args.connectors, parallel, args.timeout, args.burst)
            t1 = time.perf_counter()
            pinger.stop.set()
            pinger.join(5)
            during = rss_mib(procs)
            for sock in held:
                sock.close()
            back = readmitted(srv.port, args.timeout)
            return {"shards": args.shards, "max_connections": args.max_connections,
                    "connectors": args.connectors, "parallel": parallel, "burst": args.burst, **counts,
                    # the well-behaved client holds one slot, so the flood can get max - 1
                    "within_limit": counts["served"] + 1 <= args.max_connections,
                    "readmitted_after": back, "flood_s": round(t1 - t0, 2),
                    "rss_mib_before": before, "rss_mib_flood": during,
                    "ping_ms_quiet": pinger.window(t_quiet, t0), "ping_ms_flood": pinger.window(t0, t1)}
        finally:
            srv.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--max-connections", type=int, default=100)
    ap.add_argument("--connectors", type=int, default=1000)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 20])
    ap.add_argument("--burst", action="store_true",
                    help="each connector sends its PING and opens the next connection at once; the "
                         "answers are read after all are open (default: wait for each answer)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per connection")
    args = ap.parse_args(argv)
    ok = True
    for parallel in args.parallel:
        row = one_run(args, parallel)
        print(json.dumps(row), flush=True)
        ok = ok and row["within_limit"] and row["readmitted_after"] and row["other"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
