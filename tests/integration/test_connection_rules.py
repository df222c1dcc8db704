"""The connection rules of PROTOCOL.md against a real server: idle timeout, max connections,
clients that do not read, and authentication."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import orjson
import psutil
import pytest

from shardq.client.connection import Connection, ConnectionClosed
from shardq.protocol.frames import MsgType, encode
from shardq.testing import ServerProcess


def raw_frame(mtype: int, header: dict[str, Any], blob: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    body = struct.pack(">I", len(head)) + head + blob
    return struct.pack(">IB", 1 + len(body), mtype) + body


def ping(conn: Connection) -> None:
    conn.sock.settimeout(10)
    rid = conn.send(MsgType.PING, {})
    msg = conn.wait_for(rid)
    assert msg.type == MsgType.ACK and msg.header == {"rid": rid}


def wait_eof(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Read until EOF (or ``timeout``); returns what came and when the EOF came (inf: never)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return got, float("inf")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return got, float("inf")
        if not data:
            return got, time.monotonic() - t0
        got += data


def next_answer(conn: Connection, timeout: float) -> Any:
    conn.sock.settimeout(timeout)
    return conn.receive()


# -- idle timeout -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_timeout(tmp_path_factory) -> ServerProcess:
    s = ServerProcess(str(tmp_path_factory.mktemp("idle")),
                      ["--shards", "1", "--connection-timeout-ms", "500"]).start()
    yield s
    s.kill()


def test_idle_connection_is_closed_without_answer(quick_timeout: ServerProcess) -> None:
    silent = socket.create_connection((quick_timeout.host, quick_timeout.port), timeout=5)
    used = quick_timeout.connect(timeout=5)
    ping(used)
    t0 = time.monotonic()
    got, eof_after = wait_eof(used.sock, 4.0)
    assert got == b"" and used.decoder.buffered == 0, "the idle close must come without an answer"
    assert 0.45 <= eof_after <= 2.0, f"closed after {eof_after:.2f} s (timeout 0.5 s, sweep 1 s)"
    got, eof_after = wait_eof(silent, 4.0 - (time.monotonic() - t0))
    assert got == b"" and eof_after != float("inf"), "a connection that never sent is closed too"
    silent.close()
    used.close()


def test_active_connection_is_not_closed(quick_timeout: ServerProcess) -> None:
    with quick_timeout.connect(timeout=5) as conn:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # a frame every 0.2 s keeps it open past 4 timeouts
            ping(conn)
            time.sleep(0.2)
        ping(conn)


def test_waiting_claim_keeps_connection_open(quick_timeout: ServerProcess) -> None:
    with quick_timeout.connect(timeout=5) as conn:
        t0 = time.monotonic()
        rid = conn.send(MsgType.CLAIM, {"worker_id": "idle-w", "wait_ms": 2000, "types": ["nothing"]})
        msg = next_answer(conn, 5.0)
        waited = time.monotonic() - t0
        assert msg.type == MsgType.ACK and msg.rid == rid and msg.header["tasks"] == []
        assert waited >= 1.9, f"the claim answered after {waited:.2f} s instead of waiting 2 s"
        # Once answered it is idle again, and closed within the timeout plus the sweep.
        got, eof_after = wait_eof(conn.sock, 3.0)
        assert got == b"" and eof_after <= 2.0


def test_waiting_claim_is_answered_by_a_submit_after_the_timeout(quick_timeout: ServerProcess) -> None:
    ttype = f"late-{time.monotonic_ns()}"
    with quick_timeout.connect(timeout=5) as conn:
        rid = conn.send(MsgType.CLAIM, {"worker_id": "late-w", "wait_ms": 5000, "types": [ttype]})
        time.sleep(1.6)  # well past the 0.5 s timeout and at least one sweep
        with quick_timeout.connect(timeout=5) as producer:
            ids = producer.call(MsgType.SUBMIT, {"tasks": [{"type": ttype, "payload_len": 0}]}).header["ids"]
        msg = next_answer(conn, 5.0)
        assert msg.type == MsgType.ACK and msg.rid == rid
        assert [t["id"] for t in msg.header["tasks"]] == ids


def test_half_sent_frame_gets_connection_closed(quick_timeout: ServerProcess) -> None:
    with quick_timeout.connect(timeout=5) as conn:
        frame = raw_frame(MsgType.PING, {"rid": 1})
        conn.send_raw(frame[:6])
        got, eof_after = wait_eof(conn.sock, 4.0)
        assert got == b"" and eof_after <= 2.0


def test_half_sent_frame_closes_even_with_a_waiting_claim(quick_timeout: ServerProcess) -> None:
    """A frame left half-sent is closed after the timeout although a CLAIM is waiting."""
    with quick_timeout.connect(timeout=5) as conn:
        conn.send(MsgType.CLAIM, {"worker_id": "half-w", "wait_ms": 6000, "types": ["nothing"]})
        conn.send_raw(raw_frame(MsgType.PING, {"rid": 99})[:7])
        got, eof_after = wait_eof(conn.sock, 5.0)
        assert got == b"", "closed without an answer"
        assert eof_after <= 2.5, f"still open after {eof_after} s"


# -- max connections ------------------------------------------------------------------------------


def test_max_connections(server_factory) -> None:
    srv = server_factory("--shards", "1", "--max-connections", "5")
    conns = [srv.connect(timeout=5) for _ in range(5)]
    try:
        for c in conns:
            ping(c)
        extra = srv.connect(timeout=5)
        msg = next_answer(extra, 5.0)
        assert msg.type == MsgType.NACK
        assert msg.header == {"rid": None, "error": {"code": "Unavailable",
                                                      "message": "too many connections"}}
        got, eof_after = wait_eof(extra.sock, 5.0)
        assert got == b"" and eof_after != float("inf")
        extra.close()
        # The refused one did not take a slot: the five still work.
        for c in conns:
            ping(c)
        # After one closes, a new one is accepted (the server may take a moment to notice).
        conns.pop().close()
        deadline = time.monotonic() + 5
        while True:
            new = srv.connect(timeout=5)
            try:
                new.sock.settimeout(10)
                msg = new.wait_for(new.send(MsgType.PING, {}))
            except ConnectionClosed:
                msg = None
            if msg is not None and msg.type == MsgType.ACK:
                conns.append(new)
                break
            # Refused while the close is not yet counted: the limit's NACK, or just the EOF.
            assert msg is None or msg.header["error"]["message"] == "too many connections", msg
            new.close()
            assert time.monotonic() < deadline, "no slot came free after a close"
            time.sleep(0.05)
        stats = conns[0].call(MsgType.GET_STATS, {}).header
        assert stats["connections"] == 5
    finally:
        for c in conns:
            c.close()


# -- a client that does not read ------------------------------------------------------------------


def test_client_that_does_not_read_cannot_grow_server_memory(server_factory) -> None:
    srv = server_factory("--shards", "1")
    size = 4 * 1024 * 1024
    n_requests = 120  # 480 MiB of answers if the server buffered them all
    with srv.connect(timeout=30) as good:
        ttype = "fat"
        tid = good.call(MsgType.SUBMIT, {"tasks": [{"type": ttype, "payload_len": 0}]}).header["ids"][0]
        task = good.call(MsgType.CLAIM, {"worker_id": "w", "types": [ttype]}).header["tasks"][0]
        good.call(MsgType.RESULT, {"worker_id": "w", "results": [
            {"id": tid, "attempt": task["attempt"], "status": "completed", "result_len": size}]},
            b"r" * size)
        proc = psutil.Process(srv.pid)
        base = proc.memory_info().rss

        lazy = srv.connect(timeout=30)
        try:
            lazy.send_raw(b"".join(
                encode(MsgType.QUERY_STATUS, {"rid": i, "ids": [tid], "with_result": True})
                for i in range(n_requests)))
            peak = base
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                peak = max(peak, proc.memory_info().rss)
                # Others are served while the lazy client sits on its answers.
                t0 = time.monotonic()
                ping(good)
                assert time.monotonic() - t0 < 1.0
                time.sleep(0.05)
            growth = (peak - base) / 2**20
            assert growth < 160, f"server RSS grew {growth:.0f} MiB for a client that does not read"
            got = good.call(MsgType.QUERY_STATUS, {"ids": [tid]}).header["tasks"][0]
            assert got["status"] == "completed"

            # When it reads at last, every answer comes, in full.
            seen = set()
            read_deadline = time.monotonic() + 30
            while len(seen) < n_requests and time.monotonic() < read_deadline:
                msg = next_answer(lazy, 10.0)
                assert msg.type == MsgType.ACK and len(msg.blob) == size
                seen.add(msg.rid)
            assert seen == set(range(n_requests))
            ping(lazy)
        finally:
            lazy.close()
        assert srv.proc is not None and srv.proc.poll() is None


# -- auth -----------------------------------------------------------------------------------------

READ_KEY = "read-key-0123456789abcdef"
SUBMIT_KEY = "submit-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> ServerProcess:
    d = tmp_path_factory.mktemp("auth")
    cfg = d / "config.yaml"
    cfg.write_text(
        "auth:\n"
        "  api_keys:\n"
        f"    - {{key: {READ_KEY}, name: reader, permissions: [read]}}\n"
        f"    - {{key: {SUBMIT_KEY}, name: producer, permissions: [submit, read]}}\n"
        f"    - {{key: {ADMIN_KEY}, name: ops, permissions: [admin]}}\n")
    s = ServerProcess(str(d / "data"), ["--shards", "1", "--config", str(cfg)],
                      env={"SHARDQ_AUTH__ENABLED": "true"}).start()
    yield s
    s.kill()


def hello(conn: Connection, key: str | None) -> Any:
    header: dict[str, Any] = {"client": "test/1", "protocol": 1}
    if key is not None:
        header["api_key"] = key
    rid = conn.send(MsgType.HELLO, header)
    return rid, next_answer(conn, 5.0)


def expect_closed_after(conn: Connection, msg: Any, code: str, rid: int | None) -> None:
    assert msg.type == MsgType.NACK, msg
    assert msg.header["error"]["code"] == code
    assert msg.header["rid"] == rid
    assert conn.decoder.buffered == 0
    got, eof_after = wait_eof(conn.sock, 5.0)
    assert got == b"" and eof_after != float("inf"), "the connection must be closed"


@pytest.mark.parametrize("mtype,header", [
    (MsgType.PING, {}),
    (MsgType.GET_STATS, {}),
    (MsgType.SUBMIT, {"tasks": [{"type": "t", "payload_len": 0}]}),
    (MsgType.CLAIM, {"worker_id": "w"}),
], ids=["PING", "GET_STATS", "SUBMIT", "CLAIM"])
def test_auth_anything_before_hello_is_unauthorized(auth_server: ServerProcess, mtype: MsgType,
                                                    header: dict[str, Any]) -> None:
    with auth_server.connect(timeout=5) as conn:
        rid = conn.send(mtype, header)
        msg = next_answer(conn, 5.0)
        expect_closed_after(conn, msg, "Unauthorized", rid)
    with auth_server.connect(timeout=5) as admin:
        hello(admin, ADMIN_KEY)
        assert admin.call(MsgType.GET_STATS, {}).header["totals"]["pending"] == 0


@pytest.mark.parametrize("key", [None, "", "wrong-key-0123456789abcdef", READ_KEY + "x", 12345])
def test_auth_hello_with_bad_key_is_unauthorized(auth_server: ServerProcess, key: Any) -> None:
    with auth_server.connect(timeout=5) as conn:
        rid, msg = hello(conn, key)
        expect_closed_after(conn, msg, "Unauthorized", rid)


def test_auth_read_key(auth_server: ServerProcess) -> None:
    with auth_server.connect(timeout=5) as conn:
        rid, msg = hello(conn, READ_KEY)
        assert msg.type == MsgType.ACK and msg.rid == rid and msg.header["protocol"] == 1
        before = conn.call(MsgType.GET_STATS, {}).header["totals"]
        for mtype, header in [
            (MsgType.SUBMIT, {"tasks": [{"type": "t", "payload_len": 0}]}),
            (MsgType.CLAIM, {"worker_id": "w"}),
            (MsgType.CANCEL, {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}),
            (MsgType.REQUEUE, {}),
        ]:
            rid = conn.send(mtype, header)
            msg = conn.wait_for(rid)
            assert msg.type == MsgType.NACK and msg.rid == rid
            assert msg.header["error"]["code"] == "Forbidden", msg.header
            ping(conn)  # kept
        stats = conn.call(MsgType.GET_STATS, {}).header
        assert stats["totals"] == before
        listed = conn.call(MsgType.LIST_TASKS, {"status": "pending"}).header
        assert "tasks" in listed


def test_auth_submit_key_and_admin_key(auth_server: ServerProcess) -> None:
    with auth_server.connect(timeout=5) as prod, auth_server.connect(timeout=5) as admin:
        hello(prod, SUBMIT_KEY)
        hello(admin, ADMIN_KEY)
        ids = prod.call(MsgType.SUBMIT, {"tasks": [{"type": "auth-t", "payload_len": 0}]}).header["ids"]
        assert prod.call(MsgType.QUERY_STATUS, {"ids": ids}).header["tasks"][0]["status"] == "pending"
        rid = prod.send(MsgType.CANCEL, {"id": ids[0]})
        msg = prod.wait_for(rid)
        assert msg.type == MsgType.NACK and msg.header["error"]["code"] == "Forbidden"
        assert admin.call(MsgType.CANCEL, {"id": ids[0]}).header["status"] == "cancelled"
        ping(prod)


def test_auth_second_hello_with_bad_key_closes(auth_server: ServerProcess) -> None:
    with auth_server.connect(timeout=5) as conn:
        hello(conn, READ_KEY)
        ping(conn)
        rid, msg = hello(conn, "not-a-valid-key-at-all-xx")
        expect_closed_after(conn, msg, "Unauthorized", rid)
