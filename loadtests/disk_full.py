"""Fill the data dir's disk through SUBMITs and watch the broker hit the wall and come back.

    sudo PYTHONPATH=. python loadtests/disk_full.py --tmpfs-mib 64 --ballast-mib 16 --min-free-mib 0

Mounts a tmpfs of ``--tmpfs-mib`` (root only), puts a ballast file of ``--ballast-mib`` on it and
starts `shardq serve --shards 1` with its data dir there. ``--producers`` connections submit
batches of ``--batch`` tasks of ``--payload`` bytes, one batch in flight each, while one
well-behaved client PINGs every 10 ms on its own connection. ``--full-seconds`` after the first
refused SUBMIT the ballast is deleted; the run measures how long until a SUBMIT is acked again,
then checks that every acked id is there (QUERY_STATUS), restarts the server and checks again.
Bounded: at most ``--max-seconds`` of submitting. Prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

from shardq.client.connection import Connection
from shardq.errors import WireError
from shardq.protocol.frames import MsgType
from shardq.testing import ServerProcess


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Run:
    def __init__(self, args: argparse.Namespace, srv: ServerProcess, ballast: str) -> None:
        self.args = args
        self.srv = srv
        self.ballast = ballast
        self.lock = threading.Lock()
        self.acked: list[str] = []
        self.codes: Counter[str] = Counter()
        self.first_refusal: float | None = None
        self.freed_at: float | None = None
        self.first_ack_after_free: float | None = None
        self.stop = threading.Event()
        self.pings: list[tuple[float, float]] = []  # (when, seconds)
        self.ping_errors: Counter[str] = Counter()

    def producer(self) -> None:
        a = self.args
        payload = os.urandom(a.payload)
        specs = [{"type": "disk", "payload_len": a.payload} for _ in range(a.batch)]
        blob = payload * a.batch
        with Connection(self.srv.host, self.srv.port, timeout=a.answer_timeout) as conn:
            while not self.stop.is_set():
                try:
                    ids = conn.call(MsgType.SUBMIT, {"tasks": specs}, blob).header["ids"]
                except WireError as err:
                    with self.lock:
                        self.codes[err.code] += 1
                        if self.first_refusal is None:
                            self.first_refusal = time.monotonic()
                    time.sleep(min(err.extra.get("retry_after_ms", 100), 100) / 1000)
                    continue
                except OSError as exc:  # a timeout: what the bug looked like
                    with self.lock:
                        self.codes[f"no answer ({type(exc).__name__})"] += 1
                    return
                with self.lock:
                    self.acked.extend(ids)
                    self.codes["ACK"] += 1
                    if self.freed_at is not None and self.first_ack_after_free is None:
                        self.first_ack_after_free = time.monotonic()

    def pinger(self) -> None:
        with Connection(self.srv.host, self.srv.port, timeout=self.args.answer_timeout) as conn:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    conn.call(MsgType.PING, {})
                except WireError as err:
                    self.ping_errors[err.code] += 1
                except OSError as exc:
                    self.ping_errors[type(exc).__name__] += 1
                    return
                else:
                    self.pings.append((time.monotonic(), time.perf_counter() - t0))
                time.sleep(0.01)

    def missing(self) -> int:
        gone = 0
        with self.srv.connect() as conn:
            for i in range(0, len(self.acked), 1000):
                chunk = self.acked[i:i + 1000]
                tasks = conn.call(MsgType.QUERY_STATUS, {"ids": chunk}).header["tasks"]
                gone += sum(1 for t in tasks if t is None)
        return gone

    def go(self) -> dict[str, Any]:
        a = self.args
        threads = [threading.Thread(target=self.producer) for _ in range(a.producers)]
        threads.append(threading.Thread(target=self.pinger))
        start = time.monotonic()
        for t in threads:
            t.start()
        while time.monotonic() - start < a.max_seconds:
            time.sleep(0.05)
            now = time.monotonic()
            if self.freed_at is None and self.first_refusal is not None and now - self.first_refusal >= a.full_seconds:
                with self.srv.connect() as conn:
                    full_stats = conn.call(MsgType.GET_STATS, {}).header["shards"][0]
                os.unlink(self.ballast)
                self.freed_at = time.monotonic()
            if self.first_ack_after_free is not None:
                break  # resumed; stop before the freed space fills up again
        self.stop.set()
        for t in threads:
            t.join(30)
        full = [s for when, s in self.pings
                if self.first_refusal is not None and when >= self.first_refusal
                and (self.freed_at is None or when < self.freed_at)]
        out: dict[str, Any] = {
            "params": vars(a), "acked_tasks": len(self.acked), "answers_by_code": dict(self.codes),
            "seconds_to_resume": None if self.first_ack_after_free is None or self.freed_at is None
            else round(self.first_ack_after_free - self.freed_at, 2),
            "ping_during_full": {"n": len(full), "p50_ms": round(percentile(full, 0.5) * 1000, 2),
                                 "p99_ms": round(percentile(full, 0.99) * 1000, 2),
                                 "max_ms": round(max(full, default=0) * 1000, 2)},
            "ping_errors": dict(self.ping_errors),
        }
        if self.freed_at is not None:
            out["stats_row_while_full"] = {k: full_stats.get(k) for k in ("writable", "disk_free_bytes", "disk_alarm")}
        out["missing_after_free"] = self.missing()
        out["server_log"] = [line.strip()[-200:] for line in self.srv.stderr_lines
                             if "writes" in line or "disk alarm" in line][:6]
        self.srv.stop()
        self.srv.restart()
        out["missing_after_restart"] = self.missing()
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tmpfs-mib", type=int, default=64)
    p.add_argument("--ballast-mib", type=int, default=16, help="deleted to free space after the wall")
    p.add_argument("--min-free-mib", type=int, default=0, help="persistence.min_free_disk_bytes, in MiB")
    p.add_argument("--write-buffer-mib", type=int, default=64, help="persistence.write_buffer_size, in MiB")
    p.add_argument("--producers", type=int, default=2)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--payload", type=int, default=4096)
    p.add_argument("--full-seconds", type=float, default=5.0)
    p.add_argument("--max-seconds", type=float, default=90.0)
    p.add_argument("--answer-timeout", type=float, default=10.0)
    a = p.parse_args()
    if os.geteuid() != 0:
        print("disk_full.py mounts a tmpfs: run it as root", file=sys.stderr)
        return 2
    mnt = tempfile.mkdtemp(prefix="shardq-disk-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={a.tmpfs_mib}m", "tmpfs", mnt], check=True)
    srv = None
    try:
        ballast = os.path.join(mnt, "ballast")
        with open(ballast, "wb") as f:
            f.write(b"\0" * (a.ballast_mib << 20))
        srv = ServerProcess(os.path.join(mnt, "data"), ["--shards", "1", "--sync", "interval"],
                            env={"SHARDQ_PERSISTENCE__MIN_FREE_DISK_BYTES": str(a.min_free_mib << 20),
                                 "SHARDQ_PERSISTENCE__WRITE_BUFFER_SIZE": str(a.write_buffer_mib << 20)})
        srv.start()
        try:
            out = Run(a, srv, ballast).go()
        except Exception:
            print("".join(srv.stderr_lines), file=sys.stderr)
            raise
        print(json.dumps(out))
    finally:
        if srv is not None:
            srv.kill()
        subprocess.run(["umount", "-l", mnt], check=False)
        os.rmdir(mnt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
