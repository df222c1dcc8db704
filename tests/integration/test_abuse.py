"""Clients that misbehave on purpose must not cost the server memory without bound, nor slow
the others; and the idle sweep closes only connections that are silent with nothing in hand."""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import time
from typing import Any

import orjson
import psutil

from shardq.client.connection import Connection
from shardq.protocol.frames import MAX_FRAME, MsgType, encode
from shardq.testing import ServerProcess

MiB = 2**20


def shard_pids(srv: ServerProcess) -> list[int]:
    with srv.connect(timeout=10) as c:
        rows = c.call(MsgType.GET_STATS, {}).header["shards"]
    return [r["pid"] for r in sorted(rows, key=lambda r: r["shard"])]


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def raw_socket(srv: ServerProcess, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((srv.host, srv.port))
    return s


def push(sock: socket.socket, data: bytes, seconds: float) -> int:
    """Send what the peer takes within ``seconds`` without blocking on it; returns bytes sent."""
    sock.setblocking(False)
    view = memoryview(data)
    sent = 0
    deadline = time.monotonic() + seconds
    while sent < len(data) and time.monotonic() < deadline:
        _, writable, _ = select.select([], [sock], [], 0.05)
        if writable:
            try:
                sent += sock.send(view[sent:sent + 1024 * 1024])
            except BlockingIOError:
                pass
    return sent


def pinned(srv: ServerProcess, shard: int) -> Connection:
    """A connection served by ``shard`` (its HELLO asks for it)."""
    conn = srv.connect(timeout=10)
    ack = conn.call(MsgType.HELLO, {"client": "abuse-test/1", "protocol": 1, "shard": shard}).header
    assert ack["shard"] == shard
    return conn


def ping_ms(conn: Connection) -> float:
    t0 = time.perf_counter()
    msg = conn.call(MsgType.PING, {})
    assert msg.type == MsgType.ACK
    return (time.perf_counter() - t0) * 1000


def eof_or_answer(sock: socket.socket, timeout: float) -> bytes | None:
    """The first bytes that come within ``timeout`` (b"" on EOF; None: nothing came)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


# -- 1. clients that do not read ----------------------------------------------------------------


def test_non_reader_of_routed_answers_is_bounded(server_factory) -> None:
    """Routed answers (LIST_TASKS on two shards) count against the connection before they are
    built: clients that pipeline them and never read hold a bounded amount of memory (the
    shard's output budget, 128 MiB by default), and a client that reads is served meanwhile."""
    srv = server_factory("--shards", "2")
    with srv.connect(timeout=30) as producer:
        for _ in range(2):
            producer.call(MsgType.SUBMIT, {"tasks": [{"type": "idle", "payload_len": 0}] * 1000})
    pid = shard_pids(srv)[0]
    good = pinned(srv, 0)
    base = rss(pid)
    lazies = [raw_socket(srv, rcvbuf=4096) for _ in range(3)]
    requests = b"".join(encode(MsgType.LIST_TASKS, {"rid": i, "status": "pending", "limit": 1000})
                        for i in range(1, 301))  # ~140 MB of answers each if all were built
    try:
        for lazy in lazies:
            lazy.sendall(encode(MsgType.HELLO, {"rid": 0, "protocol": 1, "shard": 0}))
            push(lazy, requests, 0.3)
        peak, worst = base, 0.0
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            peak = max(peak, rss(pid))
            worst = max(worst, ping_ms(good))
            time.sleep(0.05)
        growth = (peak - base) / MiB
        print(f"shard RSS {base / MiB:.0f} -> peak {peak / MiB:.0f} MiB; worst PING {worst:.1f} ms")
        assert growth < 200, f"the shard grew {growth:.0f} MiB for clients that do not read"
        assert worst < 1000, f"a well-behaved client waited {worst:.0f} ms for a PING"
    finally:
        for lazy in lazies:
            lazy.close()
        good.close()


# -- 2. frames that never complete ----------------------------------------------------------------


def test_half_sent_large_frames_are_bounded_and_memory_comes_back(server_factory) -> None:
    """Beyond the shard's input budget (64 MiB by default) a large frame waits before we read
    it, and what the frames held goes back to the OS once their connections close."""
    srv = server_factory("--shards", "1")
    pid = shard_pids(srv)[0]
    base = rss(pid)
    frame = struct.pack(">IB", MAX_FRAME, MsgType.SUBMIT) + b"\0" * (MAX_FRAME - 2)  # one byte short
    socks = [raw_socket(srv) for _ in range(8)]
    try:
        for s in socks:
            push(s, frame, 0.5)
        time.sleep(0.5)
        during = rss(pid)
        with srv.connect(timeout=10) as good:  # small frames go on meanwhile
            assert ping_ms(good) < 1000
    finally:
        for s in socks:
            s.close()
    time.sleep(1.5)  # the shard notices the closes and gives the memory back
    after = rss(pid)
    print(f"shard RSS {base / MiB:.0f} -> {during / MiB:.0f} (8 half-sent 16 MiB frames) "
          f"-> {after / MiB:.0f} MiB after they closed")
    assert (during - base) / MiB < 90, "8 half-sent frames pinned more than the input budget"
    assert (after - base) / MiB < 24, "the memory of closed connections was not given back"


def test_large_frame_before_hello_is_unauthorized(tmp_path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("auth:\n  api_keys:\n    - {key: abuse-key-0123456789abcdef, name: k, permissions: [admin]}\n")
    srv = ServerProcess(str(tmp_path / "data"), ["--shards", "1", "--config", str(cfg)],
                        env={"SHARDQ_AUTH__ENABLED": "true"}).start()
    try:
        s = raw_socket(srv)
        s.sendall(struct.pack(">IB", 1024 * 1024, MsgType.HELLO) + b"\0" * 100_000)
        got = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            part = eof_or_answer(s, 5.0)
            if not part:
                break
            got += part
        assert got, "no answer to a 1 MiB frame announced before HELLO"
        _, mtype = struct.unpack_from(">IB", got)
        assert mtype == MsgType.NACK
        hlen = struct.unpack_from(">I", got, 5)[0]
        header: dict[str, Any] = orjson.loads(got[9:9 + hlen])
        assert header["rid"] is None and header["error"]["code"] == "Unauthorized", header
        assert eof_or_answer(s, 5.0) == b"", "the connection must be closed after the NACK"
        s.close()
        with srv.connect(timeout=5) as ok:  # a small HELLO is still fine
            ack = ok.call(MsgType.HELLO, {"protocol": 1, "api_key": "abuse-key-0123456789abcdef"})
            assert ack.type == MsgType.ACK
    finally:
        srv.kill()


# -- 3. the idle sweep ----------------------------------------------------------------------------


def test_idle_sweep_spares_a_routed_request_in_flight(server_factory) -> None:
    srv = server_factory("--shards", "2", "--connection-timeout-ms", "1000")
    other = shard_pids(srv)[1]
    conn = pinned(srv, 0)
    os.kill(other, signal.SIGSTOP)  # the mesh round trip of GET_STATS now waits for shard 1
    try:
        rid = conn.send(MsgType.GET_STATS, {})
        time.sleep(2.5)  # 2.5 timeouts, at least two sweeps
    finally:
        os.kill(other, signal.SIGCONT)
    conn.sock.settimeout(20)
    msg = conn.wait_for(rid)  # ConnectionClosed if the sweep closed it
    assert msg.rid == rid
    conn.close()


def test_idle_sweep_spares_a_stalled_non_reader(server_factory) -> None:
    """A client whose unread answers stopped us reading is not silent: it gets every answer."""
    srv = server_factory("--shards", "1", "--connection-timeout-ms", "1000")
    size = 4 * MiB
    with srv.connect(timeout=30) as good:
        tid = good.call(MsgType.SUBMIT, {"tasks": [{"type": "fat", "payload_len": 0}]}).header["ids"][0]
        task = good.call(MsgType.CLAIM, {"worker_id": "w", "types": ["fat"]}).header["tasks"][0]
        good.call(MsgType.RESULT, {"worker_id": "w", "results": [
            {"id": tid, "attempt": task["attempt"], "status": "completed", "result_len": size}]},
            b"r" * size)
    n = 40  # 160 MiB of answers: the server stops reading after ~64 MiB
    lazy = srv.connect(timeout=30)
    try:
        lazy.send_raw(b"".join(encode(MsgType.QUERY_STATUS, {"rid": i, "ids": [tid], "with_result": True})
                               for i in range(n)))
        time.sleep(2.5)
        seen = set()
        lazy.sock.settimeout(20)
        while len(seen) < n:
            msg = lazy.receive()  # ConnectionClosed if the sweep closed it
            assert msg.type == MsgType.ACK and len(msg.blob) == size
            seen.add(msg.rid)
        assert seen == set(range(n))
    finally:
        lazy.close()
