"""Fuzz a real server with random and mutated frames; report its answers by error code.

    python loadtests/fuzz.py --frames 1000000 --connections 4 --shards 2 --seed 1

Starts its own `shardq serve` (or use --url), then sends frames made from the protocol's
requests with fields swapped for values of the wrong type or range, removed, or added; blobs
that do not match what the header announces; headers that are not JSON objects; unknown and
response message types; bad lengths; and frames cut off before their end. Each frame waits for
its answer (a framing error closes the connection, and the fuzzer opens a new one).

A frame fails the run when it gets an Internal error (a bug: the server answered it with a
traceback in its log) or no answer at all within the timeout (a hung connection). At the end
the server's processes must be the same ones (nothing crashed), and a fresh connection's PING
must answer. Prints the answers by code, the failures (up to 20, with the frame that caused
them), and each shard's RSS before and after. tests/integration/test_fuzz.py runs a few
thousand frames of it on every CI run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import psutil  # noqa: E402

from shardq.protocol.frames import RESPONSE_TYPES, FrameDecoder, Malformed, MsgType  # noqa: E402

ANSWER_TIMEOUT_S = 10.0

# Values that every field gets tried with: wrong types, edges of ranges, unhashable values.
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 255, 256, 1000, 1001, 60_001, 2**31, 2**63, 2**64, -(2**63), 1.5, -0.0,
    float("1e308"), "", "x", "x" * 300, "pending", "dead_letter", "completed", "running", "draining",
    [], {}, ["pending"], [1, 2], [None], {"a": 1}, [[]], [{}], "0" * 36,
    "00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-00000000000G",
    "AAAAAAAA-0000-0000-0000-000000000000", str(uuid.uuid4()),
]


def _task(rng: random.Random) -> dict[str, Any]:
    return {"type": rng.choice(["fuzz", "fuzz.a", "x" * 10]), "payload_len": rng.choice([0, 1, 3]),
            "priority": rng.randint(0, 255)}


# One valid header per request type; mutations start from these.
def templates(rng: random.Random) -> dict[MsgType, dict[str, Any]]:
    some_id = str(uuid.uuid4())
    return {
        MsgType.HELLO: {"client": "fuzz/1", "protocol": 1},
        MsgType.SUBMIT: {"tasks": [_task(rng) for _ in range(rng.randint(1, 3))]},
        MsgType.CLAIM: {"worker_id": "fuzz-w", "max": rng.randint(1, 5), "wait_ms": 0,
                        "types": ["fuzz"]},
        MsgType.RESULT: {"worker_id": "fuzz-w", "results": [
            {"id": some_id, "attempt": 1, "status": rng.choice(["completed", "failed", "released"]),
             "result_len": 0, "error": "boom", "retry": True}]},
        MsgType.HEARTBEAT: {"worker_id": "fuzz-w", "cpu_percent": 1.0, "memory_rss": 1,
                            "memory_percent": 1.0, "active": [some_id], "state": "running"},
        MsgType.QUERY_STATUS: {"ids": [some_id], "with_result": rng.random() < 0.5},
        MsgType.CANCEL: {"id": some_id},
        MsgType.LIST_TASKS: {"status": rng.choice(["pending", "dead_letter"]), "type": "fuzz",
                             "min_priority": 0, "max_priority": 255, "limit": 5},
        MsgType.GET_STATS: {},
        MsgType.REGISTER_WORKER: {"worker_id": "fuzz-w", "hostname": "h", "pid": 1, "types": ["fuzz"],
                                  "concurrency": 1},
        MsgType.DEREGISTER_WORKER: {"worker_id": "fuzz-w-gone"},
        MsgType.REQUEUE: {"ids": [some_id], "status": "dead_letter"},
        MsgType.PING: {},
    }


def _mutate_value(rng: random.Random, value: Any) -> Any:
    if isinstance(value, dict) and value and rng.random() < 0.5:
        out = dict(value)
        key = rng.choice(list(out))
        out[key] = _mutate_value(rng, out[key])
        return out
    if isinstance(value, list) and value and rng.random() < 0.5:
        out_list = list(value)
        i = rng.randrange(len(out_list))
        out_list[i] = _mutate_value(rng, out_list[i])
        return out_list
    return rng.choice(ODD_VALUES)


def mutate(rng: random.Random, header: dict[str, Any]) -> dict[str, Any]:
    out = dict(header)
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if out and roll < 0.6:
            key = rng.choice(list(out))
            out[key] = _mutate_value(rng, out[key])
        elif out and roll < 0.75:
            del out[rng.choice(list(out))]
        else:
            out[rng.choice(["extra", "tasks", "ids", "status", "worker_id", "max", "limit"])] = \
                rng.choice(ODD_VALUES)
    return out


def frame_of(msg_type: int, header: dict[str, Any], blob: bytes = b"") -> bytes:
    """A frame with a header that orjson (the server's encoder) might refuse to write: integers
    beyond 64 bits are valid JSON, and the server must read them."""
    head = json.dumps(header).encode()
    return struct.pack(">IBI", 1 + 4 + len(head) + len(blob), msg_type, len(head)) + head + blob


def _announced(header: dict[str, Any]) -> int:
    """The blob size a header announces, as far as the fuzzer can tell (for right-sized blobs)."""
    total = 0
    for key in ("tasks", "results"):
        items = header.get(key)
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict):
                    n = item.get("payload_len", item.get("result_len"))
                    if type(n) is int and 0 <= n <= 64:
                        total += n
    return total


@dataclass
class Frame:
    kind: str
    data: bytes
    closes: bool = False  # a framing error: the server answers, then closes
    cut: bool = False  # sent short: no answer is expected; the connection is dropped


def make_frame(rng: random.Random, rid: int) -> Frame:
    roll = rng.random()
    if roll < 0.70:
        msg_type, header = rng.choice(list(templates(rng).items()))
        if rng.random() < 0.9:
            header = mutate(rng, header)
        if msg_type is MsgType.CLAIM and type(header.get("wait_ms")) is int and header["wait_ms"] > 50:
            header["wait_ms"] = 0  # a long poll would only slow the run down
        header["rid"] = rid if rng.random() < 0.95 else rng.choice(ODD_VALUES)
        size = _announced(header)
        size = rng.choice([size, size, size, size + 1, max(0, size - 1), 0, 7])
        return Frame(f"mutated-{msg_type.name}", frame_of(msg_type, header, rng.randbytes(size)))
    if roll < 0.82:
        body = rng.choice([b"[1,2]", b'"str"', b"{not json", b"\xff\xfe{}", b"null", b"{}" * 3, b"{\"rid\":"])
        header_len = len(body) if rng.random() < 0.8 else rng.choice([0, 1, len(body) + 5, 2**32 - 1])
        payload = struct.pack(">I", header_len) + body
        msg_type = rng.choice(list(templates(rng)))
        return Frame("bad-header", struct.pack(">IB", 1 + len(payload), msg_type) + payload)
    if roll < 0.88:
        body = rng.choice([b"", b"\x00", b"\x00\x00\x00"])  # body shorter than header_len's 4 bytes
        return Frame("short-body", struct.pack(">IB", 1 + len(body), int(MsgType.PING)) + body)
    if roll < 0.94:
        msg_type = rng.choice([0x00, 0x0E, 0x42, 0x7F, 0x80, 0x81, 0xFF])
        return Frame("bad-type", frame_of(msg_type, {"rid": rid}), closes=True)
    if roll < 0.97:
        length = rng.choice([0, 16 * 1024 * 1024 + 1, 2**32 - 1])
        return Frame("bad-length", struct.pack(">IB", length, int(MsgType.PING)), closes=True)
    full = frame_of(MsgType.PING, {"rid": rid})
    return Frame("cut", full[:rng.randrange(1, len(full))], cut=True)


@dataclass
class Tally:
    answers: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    frames: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, code: str, failure: str | None = None) -> None:
        with self.lock:
            self.answers[code] += 1
            if failure is not None and len(self.failures) < 20:
                self.failures.append(failure)


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=ANSWER_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_answer(sock: socket.socket, decoder: FrameDecoder) -> Any:
    while True:
        msg = decoder.next()
        if msg is not None:
            return msg
        data = sock.recv(65536)
        if not data:
            return None
        decoder.feed(data)


def run_connection(host: str, port: int, seed: int, frames: int, tally: Tally, deadline: float) -> None:
    rng = random.Random(seed)
    sock, decoder = _connect(host, port), FrameDecoder(RESPONSE_TYPES)
    for i in range(frames):
        if time.monotonic() > deadline:
            break
        frame = make_frame(rng, i)
        with tally.lock:
            tally.frames += 1
        try:
            sock.sendall(frame.data)
            if frame.cut:
                tally.add("cut (no answer expected)")
                sock.close()
                sock, decoder = _connect(host, port), FrameDecoder(RESPONSE_TYPES)
                continue
            msg = _read_answer(sock, decoder)
        except TimeoutError:
            tally.add("TIMEOUT", f"no answer in {ANSWER_TIMEOUT_S} s to {frame.kind}: {frame.data[:200]!r}")
            msg = None
        except OSError as exc:
            tally.add("CONNECTION-ERROR", f"{exc!r} on {frame.kind}: {frame.data[:200]!r}")
            msg = None
        if msg is None or isinstance(msg, Malformed):
            if msg is None and frame.kind != "bad-length":
                tally.add("CLOSED-WITHOUT-ANSWER", f"closed on {frame.kind}: {frame.data[:200]!r}")
        elif msg.type is MsgType.ACK:
            tally.add("ACK")
        else:
            code = (msg.header.get("error") or {}).get("code", "?")
            tally.add(code, f"Internal on {frame.kind}: {frame.data[:300]!r}" if code == "Internal" else None)
            if code != "Protocol":
                continue
        sock.close()
        sock, decoder = _connect(host, port), FrameDecoder(RESPONSE_TYPES)
    sock.close()


def fuzz(host: str, port: int, frames: int, connections: int, seed: int, seconds: float) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + seconds
    per = max(1, frames // connections)
    threads = [threading.Thread(target=run_connection, args=(host, port, seed * 1000 + c, per, tally, deadline))
               for c in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


def ping(host: str, port: int) -> bool:
    with _connect(host, port) as sock:
        sock.sendall(frame_of(MsgType.PING, {"rid": 1}))
        msg = _read_answer(sock, FrameDecoder(RESPONSE_TYPES))
        return msg is not None and not isinstance(msg, Malformed) and msg.type is MsgType.ACK


def server_pids(supervisor_pid: int) -> dict[int, str]:
    parent = psutil.Process(supervisor_pid)
    return {p.pid: " ".join(p.cmdline()).strip()[:60] for p in [parent, *parent.children(recursive=True)]}


def rss_mib(pids: dict[int, str]) -> dict[str, float]:
    out = {}
    for pid, name in pids.items():
        try:
            out[name] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
        except psutil.NoSuchProcess:
            out[name] = -1.0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=600.0, help="stop sending after this long")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args()

    from shardq.testing import ServerProcess

    with tempfile.TemporaryDirectory() as tmp:
        srv = ServerProcess(os.path.join(tmp, "data"), ["--shards", str(args.shards)]).start()
        try:
            pids = server_pids(srv.pid)
            before = rss_mib(pids)
            t0 = time.monotonic()
            tally = fuzz(srv.host, srv.port, args.frames, args.connections, args.seed, args.seconds)
            took = time.monotonic() - t0
            alive_after = server_pids(srv.pid)
            after = rss_mib(pids)
            answered = ping(srv.host, srv.port)
        finally:
            srv.kill()
    crashed = sorted(set(pids) - set(alive_after))
    summary = {"frames": tally.frames, "seconds": round(took, 1), "answers": dict(tally.answers.most_common()),
               "failures": tally.failures, "processes_same": not crashed, "ping_after": answered,
               "rss_mib_before": before, "rss_mib_after": after}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{tally.frames} frames in {took:.1f} s on {args.connections} connections, {args.shards} shards, "
              f"seed {args.seed}")
        for code, n in tally.answers.most_common():
            print(f"  {code:28} {n}")
        print(f"processes crashed: {len(crashed)}; PING after: {'answered' if answered else 'NO ANSWER'}")
        for name in before:
            print(f"  RSS {before[name]:7.1f} -> {after[name]:7.1f} MiB  {name}")
        for f in tally.failures:
            print("FAILURE:", f)
    bad = tally.answers["Internal"] + tally.answers["TIMEOUT"] + tally.answers["CLOSED-WITHOUT-ANSWER"]
    return 0 if not bad and not crashed and answered else 1


if __name__ == "__main__":
    sys.exit(main())
