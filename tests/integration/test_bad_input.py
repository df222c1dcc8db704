"""Every bad-input case of the wire contract (PROTOCOL.md: Framing, Errors) against a real server.

Each case checks the exact NACK code, the ``rid`` it carries (null where the contract says so),
and what happens to the connection afterwards: kept (a PING after it gets its ACK) or closed
(the socket reads EOF right after the NACK).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
import uuid
from typing import Any

import orjson
import pytest

from shardq.client.connection import Connection
from shardq.protocol.frames import MAX_FRAME, MAX_PAYLOAD, Message, MsgType
from shardq.testing import ServerProcess

# -- helpers --------------------------------------------------------------------------------------


def raw_frame(mtype: int, header: bytes | dict[str, Any], blob: bytes = b"",
              length: int | None = None) -> bytes:
    """A frame built by hand, so that any field can be wrong."""
    head = header if isinstance(header, bytes) else orjson.dumps(header)
    body = struct.pack(">I", len(head)) + head + blob
    n = 1 + len(body) if length is None else length
    return struct.pack(">IB", n, mtype) + body


def recv_answer(conn: Connection, timeout: float = 10.0) -> Message:
    conn.sock.settimeout(timeout)
    return conn.receive()


def expect_nack(conn: Connection, code: str, rid: int | None, timeout: float = 10.0) -> dict[str, Any]:
    msg = recv_answer(conn, timeout)
    assert msg.type == MsgType.NACK, f"expected NACK {code}, got {msg.type.name} {msg.header}"
    assert "rid" in msg.header
    assert msg.header["rid"] == rid, msg.header
    if rid is None:
        assert msg.header["rid"] is None
    err = msg.header["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err
    return err


def assert_kept(conn: Connection) -> None:
    """The connection still works: a PING gets its ACK."""
    conn.sock.settimeout(10.0)
    rid = conn.send(MsgType.PING, {})
    msg = conn.wait_for(rid)
    assert msg.type == MsgType.ACK and msg.header == {"rid": rid}


def assert_closed(conn: Connection, timeout: float = 5.0) -> None:
    """Nothing follows the NACK: the server closed the connection (EOF)."""
    assert conn.decoder.buffered == 0, "the server sent more after the NACK"
    conn.sock.settimeout(timeout)
    assert conn.sock.recv(65536) == b""


def stats_totals(conn: Connection) -> dict[str, Any]:
    return conn.call(MsgType.GET_STATS, {}).header["totals"]


def submit(conn: Connection, tasks: list[dict[str, Any]], blob: bytes = b"") -> list[str]:
    return conn.call(MsgType.SUBMIT, {"tasks": tasks}, blob).header["ids"]


def uid() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> ServerProcess:
    """One server for the whole module (each case is cheap; starting a server is not)."""
    s = ServerProcess(str(tmp_path_factory.mktemp("badinput")), ["--shards", "1"]).start()
    yield s
    s.kill()


@pytest.fixture
def conn(srv: ServerProcess) -> Connection:
    c = srv.connect(timeout=10.0)
    yield c
    c.close()


# -- framing errors: NACK Protocol, rid null, then closed -----------------------------------------


@pytest.mark.parametrize("data", [
    pytest.param(struct.pack(">I", 0), id="length-0"),
    pytest.param(struct.pack(">IB", 0, MsgType.PING), id="length-0-with-type"),
    pytest.param(struct.pack(">IB", MAX_FRAME + 1, MsgType.SUBMIT), id="length-16777217"),
    pytest.param(struct.pack(">I", MAX_FRAME + 1), id="length-16777217-alone"),
    pytest.param(struct.pack(">IB", 0xFFFFFFFF, MsgType.SUBMIT), id="length-u32-max"),
    pytest.param(raw_frame(0x0E, {"rid": 1}), id="unknown-type-0x0E"),
    pytest.param(raw_frame(0xFF, {"rid": 1}), id="unknown-type-0xFF"),
    pytest.param(raw_frame(0x00, {"rid": 1}), id="unknown-type-0x00"),
    pytest.param(raw_frame(MsgType.ACK, {"rid": 1}), id="client-sends-ACK"),
    pytest.param(raw_frame(MsgType.NACK, {"rid": 1, "error": {"code": "Internal", "message": "x"}}),
                 id="client-sends-NACK"),
])
def test_framing_error_is_protocol_nack_then_close(conn: Connection, data: bytes) -> None:
    conn.send_raw(data)
    err = expect_nack(conn, "Protocol", None)
    assert_closed(conn)
    assert err["message"]


def test_framing_error_after_good_requests_answers_them_first(conn: Connection) -> None:
    """Requests before the bad frame are answered; the Protocol NACK is the last frame."""
    data = raw_frame(MsgType.PING, {"rid": 7}) + raw_frame(0x0E, {"rid": 8})
    conn.send_raw(data)
    first = recv_answer(conn)
    assert first.type == MsgType.ACK and first.header["rid"] == 7
    expect_nack(conn, "Protocol", None)
    assert_closed(conn)


def test_frame_of_exactly_max_length_is_valid(conn: Connection) -> None:
    """length == 16,777,216 is not a framing error: it is read whole and answered (TooLarge,
    because its one payload is over 10 MiB), and the connection is kept."""
    before = stats_totals(conn)
    header_probe = orjson.dumps({"rid": 41, "tasks": [{"type": "big", "payload_len": 16_000_000}]})
    payload_len = MAX_FRAME - 1 - 4 - len(header_probe)
    header = orjson.dumps({"rid": 41, "tasks": [{"type": "big", "payload_len": payload_len}]})
    assert len(header) == len(header_probe)
    frame = raw_frame(MsgType.SUBMIT, header, b"\x00" * payload_len)
    assert struct.unpack(">I", frame[:4])[0] == MAX_FRAME
    assert payload_len > MAX_PAYLOAD
    conn.send_raw(frame)
    err = expect_nack(conn, "TooLarge", 41, timeout=30)
    assert "payload_len" in err["message"]
    assert_kept(conn)
    assert stats_totals(conn) == before


# -- malformed bodies: BadRequest, rid null, kept -------------------------------------------------


def _body_frame(mtype: int, body: bytes) -> bytes:
    return struct.pack(">IB", 1 + len(body), mtype) + body


@pytest.mark.parametrize("data", [
    pytest.param(_body_frame(MsgType.PING, b""), id="body-0-bytes"),
    pytest.param(_body_frame(MsgType.PING, b"\x00"), id="body-1-byte"),
    pytest.param(_body_frame(MsgType.SUBMIT, b"\x00\x00\x00"), id="body-3-bytes"),
    pytest.param(_body_frame(MsgType.PING, struct.pack(">I", 3) + b"{}"), id="header_len-past-body"),
    pytest.param(_body_frame(MsgType.PING, struct.pack(">I", 0xFFFFFFFF) + b"{}"),
                 id="header_len-u32-max"),
    pytest.param(raw_frame(MsgType.PING, b'{"rid": 1, "x": "\xff\xfe"}'), id="header-not-utf8"),
    pytest.param(raw_frame(MsgType.PING, b"\xc3\x28"), id="header-invalid-utf8-seq"),
    pytest.param(raw_frame(MsgType.PING, b'{"rid": 1'), id="header-truncated-json"),
    pytest.param(raw_frame(MsgType.PING, b"rid=1"), id="header-not-json"),
    pytest.param(raw_frame(MsgType.PING, b""), id="header-empty"),
    pytest.param(raw_frame(MsgType.PING, b"[1, 2]"), id="header-json-array"),
    pytest.param(raw_frame(MsgType.PING, b"42"), id="header-json-number"),
    pytest.param(raw_frame(MsgType.PING, b'"rid"'), id="header-json-string"),
    pytest.param(raw_frame(MsgType.PING, b"null"), id="header-json-null"),
    pytest.param(raw_frame(MsgType.SUBMIT, b"[]", b"blob"), id="submit-header-array-with-blob"),
])
def test_malformed_body_is_bad_request_rid_null_kept(conn: Connection, data: bytes) -> None:
    conn.send_raw(data)
    expect_nack(conn, "BadRequest", None)
    assert_kept(conn)


def test_malformed_frames_do_not_desync_the_stream(conn: Connection) -> None:
    """After a malformed frame, the next frames are read at the right offsets."""
    conn.send_raw(_body_frame(MsgType.PING, struct.pack(">I", 99) + b"{}")
                  + raw_frame(MsgType.PING, {"rid": 5}) + raw_frame(MsgType.PING, b"[]")
                  + raw_frame(MsgType.PING, {"rid": 6}))
    got = [recv_answer(conn) for _ in range(4)]
    assert [(m.type, m.header["rid"]) for m in got] == [
        (MsgType.NACK, None), (MsgType.ACK, 5), (MsgType.NACK, None), (MsgType.ACK, 6)]
    assert_kept(conn)


# -- rid ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    pytest.param({}, id="missing"),
    pytest.param({"rid": None}, id="null"),
    pytest.param({"rid": -1}, id="negative"),
    pytest.param({"rid": 2**63}, id="2**63"),
    pytest.param({"rid": "1"}, id="string"),
    pytest.param({"rid": 1.0}, id="float"),
    pytest.param({"rid": True}, id="bool"),
    pytest.param({"rid": [1]}, id="list"),
])
@pytest.mark.parametrize("mtype", [MsgType.PING, MsgType.GET_STATS, MsgType.SUBMIT])
def test_bad_rid_is_bad_request_rid_null_kept(conn: Connection, header: dict[str, Any],
                                              mtype: MsgType) -> None:
    before = stats_totals(conn)
    body = dict(header)
    if mtype == MsgType.SUBMIT:
        body["tasks"] = [{"type": "t", "payload_len": 0}]
    conn.send_raw(raw_frame(mtype, body))
    err = expect_nack(conn, "BadRequest", None)
    assert "rid" in err["message"]
    assert_kept(conn)
    assert stats_totals(conn) == before  # the SUBMIT without a readable rid stored nothing


@pytest.mark.parametrize("rid", [0, 1, 2**63 - 1])
def test_edge_rids_are_valid_and_echoed(conn: Connection, rid: int) -> None:
    conn.send_raw(raw_frame(MsgType.PING, {"rid": rid}))
    msg = recv_answer(conn)
    assert msg.type == MsgType.ACK and msg.header == {"rid": rid}


# -- BadRequest for fields: rid echoed, kept, message names the field --------------------------------

GOOD_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
BAD_IDS = [
    pytest.param("nope", id="word"),
    pytest.param(GOOD_ID.upper(), id="uppercase"),
    pytest.param(GOOD_ID.replace("-", ""), id="no-hyphens"),
    pytest.param("{" + GOOD_ID + "}", id="braces"),
    pytest.param(GOOD_ID + " ", id="trailing-space"),
    pytest.param(GOOD_ID[:-1] + "g", id="non-hex"),
    pytest.param(12345, id="int"),
    pytest.param(None, id="null"),
]


def _t(**kw: Any) -> dict[str, Any]:
    task = {"type": "t", "payload_len": 0}
    task.update(kw)
    return {k: v for k, v in task.items() if v is not _DROP}


_DROP = object()

# (message type, header without rid, blob, a word the error message must contain)
FIELD_CASES = [
    # SUBMIT
    (MsgType.SUBMIT, {}, b"", "tasks"),
    (MsgType.SUBMIT, {"tasks": []}, b"", "tasks"),
    (MsgType.SUBMIT, {"tasks": "t"}, b"", "tasks"),
    (MsgType.SUBMIT, {"tasks": {"type": "t"}}, b"", "tasks"),
    (MsgType.SUBMIT, {"tasks": ["t"]}, b"", "tasks[0]"),
    (MsgType.SUBMIT, {"tasks": [_t(type=_DROP)]}, b"", "type"),
    (MsgType.SUBMIT, {"tasks": [_t(type="")]}, b"", "type"),
    (MsgType.SUBMIT, {"tasks": [_t(type=7)]}, b"", "type"),
    (MsgType.SUBMIT, {"tasks": [_t(type="x" * 256)]}, b"", "type"),
    (MsgType.SUBMIT, {"tasks": [_t(payload_len=_DROP)]}, b"", "payload_len"),
    (MsgType.SUBMIT, {"tasks": [_t(payload_len=-1)]}, b"", "payload_len"),
    (MsgType.SUBMIT, {"tasks": [_t(payload_len="0")]}, b"", "payload_len"),
    (MsgType.SUBMIT, {"tasks": [_t(payload_len=1.5)]}, b"", "payload_len"),
    (MsgType.SUBMIT, {"tasks": [_t(priority=256)]}, b"", "priority"),
    (MsgType.SUBMIT, {"tasks": [_t(priority=-1)]}, b"", "priority"),
    (MsgType.SUBMIT, {"tasks": [_t(priority="x")]}, b"", "priority"),
    (MsgType.SUBMIT, {"tasks": [_t(priority=True)]}, b"", "priority"),
    (MsgType.SUBMIT, {"tasks": [_t(priority=100.0)]}, b"", "priority"),
    (MsgType.SUBMIT, {"tasks": [_t(), _t(priority=300)]}, b"", "tasks[1].priority"),
    (MsgType.SUBMIT, {"tasks": [_t(delay_ms=-1)]}, b"", "delay_ms"),
    (MsgType.SUBMIT, {"tasks": [_t(delay_ms="10")]}, b"", "delay_ms"),
    (MsgType.SUBMIT, {"tasks": [_t(delay_ms=10, scheduled_ms=1763790000000)]}, b"", "scheduled_ms"),
    (MsgType.SUBMIT, {"tasks": [_t(scheduled_ms=-5)]}, b"", "scheduled_ms"),
    (MsgType.SUBMIT, {"tasks": [_t(scheduled_ms="soon")]}, b"", "scheduled_ms"),
    (MsgType.SUBMIT, {"tasks": [_t(max_retries=-1)]}, b"", "max_retries"),
    (MsgType.SUBMIT, {"tasks": [_t(max_retries=1001)]}, b"", "max_retries"),
    (MsgType.SUBMIT, {"tasks": [_t(timeout_seconds=0)]}, b"", "timeout_seconds"),
    (MsgType.SUBMIT, {"tasks": [_t(timeout_seconds=1.5)]}, b"", "timeout_seconds"),
    (MsgType.SUBMIT, {"tasks": [_t(depends_on="x")]}, b"", "depends_on"),
    (MsgType.SUBMIT, {"tasks": [_t(depends_on=["bad"])]}, b"", "depends_on"),
    (MsgType.SUBMIT, {"tasks": [_t(depends_on=[GOOD_ID, GOOD_ID.upper()])]}, b"", "depends_on[1]"),
    (MsgType.SUBMIT, {"tasks": [_t(id="bad")]}, b"", "id"),
    (MsgType.SUBMIT, {"tasks": [_t(id=GOOD_ID.upper())]}, b"", "id"),
    (MsgType.SUBMIT, {"tasks": [_t(id=7)]}, b"", "id"),
    (MsgType.SUBMIT, {"tasks": [_t(id=GOOD_ID), _t(id=GOOD_ID)]}, b"", "id"),
    (MsgType.SUBMIT, {"tasks": [_t(id=GOOD_ID, depends_on=[GOOD_ID])]}, b"", "depends_on"),
    (MsgType.SUBMIT, {"tasks": [_t(id=GOOD_ID, depends_on=["1f8fad5b-d9cb-469f-a165-70867728950e"]),
                                _t(id="1f8fad5b-d9cb-469f-a165-70867728950e", depends_on=[GOOD_ID])]},
     b"", "depends_on"),
    # CLAIM
    (MsgType.CLAIM, {}, b"", "worker_id"),
    (MsgType.CLAIM, {"worker_id": ""}, b"", "worker_id"),
    (MsgType.CLAIM, {"worker_id": 5}, b"", "worker_id"),
    (MsgType.CLAIM, {"worker_id": "w", "max": 0}, b"", "max"),
    (MsgType.CLAIM, {"worker_id": "w", "max": 1001}, b"", "max"),
    (MsgType.CLAIM, {"worker_id": "w", "max": "1"}, b"", "max"),
    (MsgType.CLAIM, {"worker_id": "w", "max": True}, b"", "max"),
    (MsgType.CLAIM, {"worker_id": "w", "wait_ms": -1}, b"", "wait_ms"),
    (MsgType.CLAIM, {"worker_id": "w", "wait_ms": 60001}, b"", "wait_ms"),
    (MsgType.CLAIM, {"worker_id": "w", "wait_ms": 10.5}, b"", "wait_ms"),
    (MsgType.CLAIM, {"worker_id": "w", "types": "t"}, b"", "types"),
    (MsgType.CLAIM, {"worker_id": "w", "types": [""]}, b"", "types"),
    (MsgType.CLAIM, {"worker_id": "w", "types": [1]}, b"", "types"),
    # RESULT
    (MsgType.RESULT, {"results": []}, b"", "worker_id"),
    (MsgType.RESULT, {"worker_id": "w"}, b"", "results"),
    (MsgType.RESULT, {"worker_id": "w", "results": "x"}, b"", "results"),
    (MsgType.RESULT, {"worker_id": "w", "results": [5]}, b"", "results[0]"),
    (MsgType.RESULT, {"worker_id": "w", "results": [{"id": GOOD_ID, "attempt": 1, "status": "done"}]},
     b"", "status"),
    (MsgType.RESULT, {"worker_id": "w", "results": [{"id": GOOD_ID, "attempt": 1}]}, b"", "status"),
    (MsgType.RESULT, {"worker_id": "w", "results": [{"id": GOOD_ID, "attempt": 1,
                                                     "status": "COMPLETED"}]}, b"", "status"),
    (MsgType.RESULT, {"worker_id": "w", "results": [{"id": "x", "attempt": 1, "status": "released"}]},
     b"", "id"),
    (MsgType.RESULT, {"worker_id": "w", "results": [{"id": GOOD_ID, "status": "released"}]},
     b"", "attempt"),
    (MsgType.RESULT, {"worker_id": "w", "results": [{"id": GOOD_ID, "attempt": -1,
                                                     "status": "released"}]}, b"", "attempt"),
    (MsgType.RESULT, {"worker_id": "w", "results": [{"id": GOOD_ID, "attempt": 1, "status": "completed",
                                                     "result_len": -1}]}, b"", "result_len"),
    (MsgType.RESULT, {"worker_id": "w", "results": [{"id": GOOD_ID, "attempt": 1, "status": "failed"}]},
     b"", "error"),
    (MsgType.RESULT, {"worker_id": "w", "results": [{"id": GOOD_ID, "attempt": 1, "status": "failed",
                                                     "error": "e", "retry": "yes"}]}, b"", "retry"),
    (MsgType.RESULT, {"worker_id": "w", "results": [
        {"id": GOOD_ID, "attempt": 1, "status": "released"},
        {"id": GOOD_ID.upper(), "attempt": 1, "status": "released"}]}, b"", "results[1].id"),
    # HEARTBEAT
    (MsgType.HEARTBEAT, {}, b"", "worker_id"),
    (MsgType.HEARTBEAT, {"worker_id": "w", "cpu_percent": "x"}, b"", "cpu_percent"),
    (MsgType.HEARTBEAT, {"worker_id": "w", "cpu_percent": -1}, b"", "cpu_percent"),
    (MsgType.HEARTBEAT, {"worker_id": "w", "memory_rss": -1}, b"", "memory_rss"),
    (MsgType.HEARTBEAT, {"worker_id": "w", "memory_rss": 1.5}, b"", "memory_rss"),
    (MsgType.HEARTBEAT, {"worker_id": "w", "memory_percent": "x"}, b"", "memory_percent"),
    (MsgType.HEARTBEAT, {"worker_id": "w", "state": "sleeping"}, b"", "state"),
    (MsgType.HEARTBEAT, {"worker_id": "w", "active": "x"}, b"", "active"),
    (MsgType.HEARTBEAT, {"worker_id": "w", "active": [GOOD_ID, "bad"]}, b"", "active[1]"),
    # QUERY_STATUS
    (MsgType.QUERY_STATUS, {}, b"", "ids"),
    (MsgType.QUERY_STATUS, {"ids": GOOD_ID}, b"", "ids"),
    (MsgType.QUERY_STATUS, {"ids": [GOOD_ID] * 1001}, b"", "ids"),
    (MsgType.QUERY_STATUS, {"ids": [GOOD_ID, "bad"]}, b"", "ids[1]"),
    (MsgType.QUERY_STATUS, {"ids": [GOOD_ID], "with_result": "yes"}, b"", "with_result"),
    (MsgType.QUERY_STATUS, {"ids": [GOOD_ID], "with_result": 1}, b"", "with_result"),
    # CANCEL
    (MsgType.CANCEL, {}, b"", "id"),
    (MsgType.CANCEL, {"id": "bad"}, b"", "id"),
    (MsgType.CANCEL, {"id": GOOD_ID.upper()}, b"", "id"),
    (MsgType.CANCEL, {"id": [GOOD_ID]}, b"", "id"),
    # LIST_TASKS
    (MsgType.LIST_TASKS, {}, b"", "status"),
    (MsgType.LIST_TASKS, {"status": "done"}, b"", "status"),
    (MsgType.LIST_TASKS, {"status": "PENDING"}, b"", "status"),
    (MsgType.LIST_TASKS, {"status": 0}, b"", "status"),
    # Unhashable values were answered Internal (a set lookup raised TypeError).
    (MsgType.LIST_TASKS, {"status": []}, b"", "status"),
    (MsgType.LIST_TASKS, {"status": {}}, b"", "status"),
    (MsgType.LIST_TASKS, {"status": ["pending"]}, b"", "status"),
    (MsgType.REQUEUE, {"status": ["dead_letter"]}, b"", "status"),
    (MsgType.HEARTBEAT, {"worker_id": "w", "state": {"a": 1}}, b"", "state"),
    (MsgType.LIST_TASKS, {"status": "pending", "limit": 0}, b"", "limit"),
    (MsgType.LIST_TASKS, {"status": "pending", "limit": 1001}, b"", "limit"),
    (MsgType.LIST_TASKS, {"status": "pending", "limit": "10"}, b"", "limit"),
    (MsgType.LIST_TASKS, {"status": "pending", "min_priority": 256}, b"", "min_priority"),
    (MsgType.LIST_TASKS, {"status": "pending", "max_priority": -1}, b"", "max_priority"),
    (MsgType.LIST_TASKS, {"status": "pending", "min_priority": 200, "max_priority": 100}, b"",
     "min_priority"),
    (MsgType.LIST_TASKS, {"status": "pending", "type": ""}, b"", "type"),
    (MsgType.LIST_TASKS, {"status": "pending", "type": 5}, b"", "type"),
    (MsgType.LIST_TASKS, {"status": "pending", "cursor": "zz"}, b"", "cursor"),
    (MsgType.LIST_TASKS, {"status": "pending", "cursor": 5}, b"", "cursor"),
    # REGISTER_WORKER / DEREGISTER_WORKER
    (MsgType.REGISTER_WORKER, {}, b"", "worker_id"),
    (MsgType.REGISTER_WORKER, {"worker_id": "w", "pid": -1}, b"", "pid"),
    (MsgType.REGISTER_WORKER, {"worker_id": "w", "concurrency": 0}, b"", "concurrency"),
    (MsgType.REGISTER_WORKER, {"worker_id": "w", "types": "t"}, b"", "types"),
    (MsgType.REGISTER_WORKER, {"worker_id": "w", "hostname": 5}, b"", "hostname"),
    (MsgType.DEREGISTER_WORKER, {}, b"", "worker_id"),
    (MsgType.DEREGISTER_WORKER, {"worker_id": ["w"]}, b"", "worker_id"),
    # REQUEUE
    (MsgType.REQUEUE, {"status": "pending"}, b"", "status"),
    (MsgType.REQUEUE, {"ids": GOOD_ID}, b"", "ids"),
    (MsgType.REQUEUE, {"ids": ["bad"]}, b"", "ids[0]"),
    (MsgType.REQUEUE, {"ids": [GOOD_ID] * 1001}, b"", "ids"),
    (MsgType.REQUEUE, {"limit": 0}, b"", "limit"),
    (MsgType.REQUEUE, {"type": ""}, b"", "type"),
]


def _case_id(case: tuple[Any, ...]) -> str:
    mtype, header, _, word = case
    text = orjson.dumps(header).decode()
    return f"{mtype.name}:{word}:{text[:60]}"


@pytest.mark.parametrize("case", FIELD_CASES, ids=[_case_id(c) for c in FIELD_CASES])
def test_bad_field_is_bad_request_naming_it(conn: Connection, case: tuple[Any, ...]) -> None:
    mtype, header, blob, word = case
    before = stats_totals(conn)
    rid = 1000 + FIELD_CASES.index(case)
    conn.send_raw(raw_frame(mtype, {"rid": rid, **header}, blob))
    err = expect_nack(conn, "BadRequest", rid)
    assert word in err["message"], err
    assert_kept(conn)
    if mtype == MsgType.SUBMIT:
        assert stats_totals(conn) == before


@pytest.mark.parametrize("where,bad_id", [
    pytest.param(where, p.values[0], id=f"{where}-{p.id}")
    for where in ("cancel", "query", "submit-id", "depends_on", "result", "requeue")
    for p in BAD_IDS
    if not (where == "submit-id" and p.values[0] is None)  # a null id means "make one"
])
def test_malformed_task_id_anywhere_is_bad_request(conn: Connection, where: str, bad_id: Any) -> None:
    rid = 77
    header: dict[str, Any]
    if where == "cancel":
        mtype, header = MsgType.CANCEL, {"id": bad_id}
    elif where == "query":
        mtype, header = MsgType.QUERY_STATUS, {"ids": [GOOD_ID, bad_id]}
    elif where == "submit-id":
        mtype, header = MsgType.SUBMIT, {"tasks": [_t(), _t(id=bad_id)]}
    elif where == "depends_on":
        mtype, header = MsgType.SUBMIT, {"tasks": [_t(depends_on=[bad_id])]}
    elif where == "result":
        mtype, header = MsgType.RESULT, {"worker_id": "w", "results": [
            {"id": bad_id, "attempt": 1, "status": "released"}]}
    else:
        mtype, header = MsgType.REQUEUE, {"ids": [bad_id]}
    before = stats_totals(conn)
    conn.send_raw(raw_frame(mtype, {"rid": rid, **header}))
    err = expect_nack(conn, "BadRequest", rid)
    assert "id" in err["message"]
    assert_kept(conn)
    assert stats_totals(conn) == before


@pytest.mark.parametrize("lengths,blob_len", [
    pytest.param([10], 5, id="shorter"),
    pytest.param([10], 15, id="longer"),
    pytest.param([0], 1, id="zero-announced-one-sent"),
    pytest.param([3, 4], 6, id="two-payloads-short"),
    pytest.param([3, 4], 8, id="two-payloads-long"),
])
def test_submit_blob_size_mismatch(conn: Connection, lengths: list[int], blob_len: int) -> None:
    before = stats_totals(conn)
    tasks = [_t(payload_len=n) for n in lengths]
    conn.send_raw(raw_frame(MsgType.SUBMIT, {"rid": 9, "tasks": tasks}, b"p" * blob_len))
    err = expect_nack(conn, "BadRequest", 9)
    assert "blob" in err["message"] and str(blob_len) in err["message"], err
    assert_kept(conn)
    assert stats_totals(conn) == before


def _claimed_task(conn: Connection, worker: str) -> dict[str, Any]:
    ttype = f"rt-{uid()}"
    submit(conn, [{"type": ttype, "payload_len": 0}])
    tasks = conn.call(MsgType.CLAIM, {"worker_id": worker, "types": [ttype]}).header["tasks"]
    assert len(tasks) == 1
    return tasks[0]


@pytest.mark.parametrize("blob_len", [0, 7], ids=["shorter", "longer"])
def test_result_blob_size_mismatch_changes_nothing(conn: Connection, blob_len: int) -> None:
    task = _claimed_task(conn, "w-mismatch")
    header = {"rid": 12, "worker_id": "w-mismatch", "results": [
        {"id": task["id"], "attempt": task["attempt"], "status": "completed", "result_len": 4}]}
    conn.send_raw(raw_frame(MsgType.RESULT, header, b"r" * blob_len))
    err = expect_nack(conn, "BadRequest", 12)
    assert "blob" in err["message"]
    assert_kept(conn)
    now = conn.call(MsgType.QUERY_STATUS, {"ids": [task["id"]]}).header["tasks"][0]
    assert now["status"] == "in_progress" and now["attempt"] == task["attempt"]
    assert now["result_len"] is None


# A message whose header announces no blob sections must carry an empty blob: "a blob whose size is
# not exactly the sum of the announced lengths is a BadRequest" (the sum is 0 here). Each header is
# valid, so only the blob is wrong; what the request would have done must not happen.
BLOBLESS = [MsgType.PING, MsgType.HELLO, MsgType.GET_STATS, MsgType.QUERY_STATUS, MsgType.CANCEL,
            MsgType.LIST_TASKS, MsgType.CLAIM, MsgType.HEARTBEAT, MsgType.REGISTER_WORKER,
            MsgType.DEREGISTER_WORKER, MsgType.REQUEUE]


def _blobless_header(mtype: MsgType, task_id: str, ttype: str) -> dict[str, Any]:
    return {
        MsgType.PING: {}, MsgType.HELLO: {"protocol": 1, "client": "tests/1"}, MsgType.GET_STATS: {},
        MsgType.QUERY_STATUS: {"ids": [task_id]}, MsgType.CANCEL: {"id": task_id},
        MsgType.LIST_TASKS: {"status": "pending", "type": ttype},
        MsgType.CLAIM: {"worker_id": "w-blob", "types": [ttype]},
        MsgType.HEARTBEAT: {"worker_id": "w-blob"}, MsgType.REGISTER_WORKER: {"worker_id": "w-blob"},
        MsgType.DEREGISTER_WORKER: {"worker_id": "w-blob"}, MsgType.REQUEUE: {"ids": [task_id]},
    }[mtype]


@pytest.mark.parametrize("blob_len", [1, 100])
@pytest.mark.parametrize("mtype", BLOBLESS, ids=[m.name for m in BLOBLESS])
def test_blob_on_a_message_that_announces_none_is_bad_request(conn: Connection, mtype: MsgType,
                                                              blob_len: int) -> None:
    ttype = f"blob-{uid()}"
    (tid,) = submit(conn, [{"type": ttype, "payload_len": 0}])
    before = stats_totals(conn)
    conn.send_raw(raw_frame(mtype, {"rid": 31, **_blobless_header(mtype, tid, ttype)}, b"b" * blob_len))
    err = expect_nack(conn, "BadRequest", 31)
    assert err["message"] == f"blob is {blob_len} bytes but the header announces 0", err
    assert_kept(conn)
    # Nothing happened: the task was neither cancelled nor claimed, nothing else changed.
    assert conn.call(MsgType.QUERY_STATUS, {"ids": [tid]}).header["tasks"][0]["status"] == "pending"
    assert stats_totals(conn) == before


def test_blob_on_a_message_that_announces_none_after_a_bad_field(conn: Connection) -> None:
    """The contract checks every field first, then the blob's size: a bad field is what is named."""
    conn.send_raw(raw_frame(MsgType.CANCEL, {"rid": 32, "id": "nope"}, b"xyz"))
    err = expect_nack(conn, "BadRequest", 32)
    assert err["message"].startswith("id:"), err
    conn.send_raw(raw_frame(MsgType.CLAIM, {"rid": 33, "worker_id": "w", "max": 0}, b"xyz"))
    err = expect_nack(conn, "BadRequest", 33)
    assert err["message"].startswith("max:"), err
    assert_kept(conn)


# -- TooLarge -------------------------------------------------------------------------------------------


def test_payload_over_limit_is_too_large_and_stores_nothing(conn: Connection) -> None:
    before = stats_totals(conn)
    n = MAX_PAYLOAD + 1
    conn.send_raw(raw_frame(MsgType.SUBMIT, {"rid": 21, "tasks": [
        {"type": "ok", "payload_len": 1}, {"type": "big", "payload_len": n}]}, b"x" + b"\x01" * n))
    err = expect_nack(conn, "TooLarge", 21, timeout=30)
    assert "payload_len" in err["message"] and "tasks[1]" in err["message"]
    assert_kept(conn)
    assert stats_totals(conn) == before
    # A payload of exactly the limit is fine.
    ids = submit(conn, [{"type": f"edge-{uid()}", "payload_len": MAX_PAYLOAD}], b"\x02" * MAX_PAYLOAD)
    got = conn.call(MsgType.QUERY_STATUS, {"ids": ids}).header["tasks"][0]
    assert got["payload_len"] == MAX_PAYLOAD
    conn.call(MsgType.CANCEL, {"id": ids[0]})


def test_result_over_limit_is_per_item_too_large_task_unchanged(conn: Connection) -> None:
    worker = "w-big-result"
    task = _claimed_task(conn, worker)
    other = _claimed_task(conn, worker)
    n = MAX_PAYLOAD + 1
    msg = conn.call(MsgType.RESULT, {"worker_id": worker, "results": [
        {"id": task["id"], "attempt": task["attempt"], "status": "completed", "result_len": n},
        {"id": other["id"], "attempt": other["attempt"], "status": "completed", "result_len": 2},
    ]}, b"\x03" * n + b"ok")
    results = msg.header["results"]
    assert results[0]["id"] == task["id"] and results[0]["error"]["code"] == "TooLarge"
    assert results[1] == {"id": other["id"], "status": "completed"}
    now = conn.call(MsgType.QUERY_STATUS, {"ids": [task["id"], other["id"]],
                                            "with_result": True})
    t0, t1 = now.header["tasks"]
    assert t0["status"] == "in_progress" and t0["attempt"] == task["attempt"]
    assert t0["result_len"] is None and t0["worker_id"] == worker
    assert t1["status"] == "completed" and t1["result_len"] == 2
    assert now.blob == b"ok"
    # The same lease can still complete it properly.
    ok = conn.call(MsgType.RESULT, {"worker_id": worker, "results": [
        {"id": task["id"], "attempt": task["attempt"], "status": "completed", "result_len": 1}]}, b"z")
    assert ok.header["results"] == [{"id": task["id"], "status": "completed"}]


def test_query_with_results_over_a_frame_is_too_large(conn: Connection) -> None:
    worker = "w-fat"
    size = 9 * 1024 * 1024  # each result fits; two do not fit one frame
    ids = []
    for fill in (b"\x04", b"\x05"):
        task = _claimed_task(conn, worker)
        res = conn.call(MsgType.RESULT, {"worker_id": worker, "results": [
            {"id": task["id"], "attempt": task["attempt"], "status": "completed",
             "result_len": size}]}, fill * size)
        assert res.header["results"][0]["status"] == "completed"
        ids.append(task["id"])
    conn.send_raw(raw_frame(MsgType.QUERY_STATUS, {"rid": 31, "ids": ids, "with_result": True}))
    err = expect_nack(conn, "TooLarge", 31, timeout=30)
    assert err["message"]
    assert_kept(conn)
    # One at a time works, and without results both are fine.
    one = conn.call(MsgType.QUERY_STATUS, {"ids": ids[:1], "with_result": True})
    assert one.blob == b"\x04" * size
    both = conn.call(MsgType.QUERY_STATUS, {"ids": ids})
    assert [t["result_len"] for t in both.header["tasks"]] == [size, size] and both.blob == b""


# -- HELLO -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 0])
def test_hello_unsupported_protocol_is_protocol_and_closed(conn: Connection, version: int) -> None:
    conn.send_raw(raw_frame(MsgType.HELLO, {"rid": 3, "client": "t/1", "protocol": version}))
    msg = recv_answer(conn)
    assert msg.type == MsgType.NACK
    assert msg.header["error"]["code"] == "Protocol"
    assert msg.header["rid"] == 3  # the rid was readable, so it is echoed
    assert str(version) in msg.header["error"]["message"]
    assert_closed(conn)


def test_hello_protocol_1_works(conn: Connection) -> None:
    msg = conn.call(MsgType.HELLO, {"client": "t/1", "protocol": 1})
    assert msg.header["protocol"] == 1
    assert msg.header["max_frame"] == MAX_FRAME and msg.header["max_payload"] == MAX_PAYLOAD


# -- half-sent frames, junk connections ---------------------------------------------------------------


def test_half_sent_frame_then_close_stores_nothing(srv: ServerProcess, conn: Connection) -> None:
    before = stats_totals(conn)
    ttype = f"half-{uid()}"
    frame = raw_frame(MsgType.SUBMIT, {"rid": 1, "tasks": [{"type": ttype, "payload_len": 100}]},
                      b"h" * 100)
    for cut in (3, 4, 9, len(frame) - 1):
        s = socket.create_connection((srv.host, srv.port), timeout=5)
        s.sendall(frame[:cut])
        s.close()
    # The server is fine for others and stored nothing of the half frames.
    assert_kept(conn)
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert stats_totals(conn) == before
        listed = conn.call(MsgType.LIST_TASKS, {"status": "pending", "type": ttype}).header
        assert listed["tasks"] == []
        time.sleep(0.05)
    # A complete frame of the same bytes on a fresh connection is stored.
    with srv.connect(timeout=10) as c2:
        c2.send_raw(frame)
        msg = recv_answer(c2)
        assert msg.type == MsgType.ACK and len(msg.header["ids"]) == 1
        c2.call(MsgType.CANCEL, {"id": msg.header["ids"][0]})


def test_junk_connections_do_not_disturb_a_good_client(srv: ServerProcess, conn: Connection) -> None:
    rng = random.Random(1234)
    errors: list[BaseException] = []
    stop = threading.Event()
    junk_done = [0]

    def junk() -> None:
        try:
            for i in range(50):
                if stop.is_set():
                    return
                s = socket.create_connection((srv.host, srv.port), timeout=5)
                try:
                    if i % 5 == 0:  # a framing-valid prefix that never completes
                        s.sendall(struct.pack(">IB", 1000, MsgType.SUBMIT) + rng.randbytes(200))
                    else:
                        s.sendall(rng.randbytes(rng.randint(1, 4096)))
                    s.settimeout(0.2)
                    try:
                        while s.recv(65536):
                            pass
                    except (TimeoutError, ConnectionError):
                        pass
                except ConnectionError:
                    pass
                finally:
                    s.close()
                junk_done[0] += 1
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    ttype = f"good-{uid()}"
    threads = [threading.Thread(target=junk, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    served = 0
    deadline = time.monotonic() + 30
    try:
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            ids = submit(conn, [{"type": ttype, "payload_len": 3}], b"abc")
            got = conn.call(MsgType.CLAIM, {"worker_id": "good", "types": [ttype]}).header["tasks"]
            assert [t["id"] for t in got] == ids
            r = conn.call(MsgType.RESULT, {"worker_id": "good", "results": [
                {"id": ids[0], "attempt": got[0]["attempt"], "status": "completed"}]})
            assert r.header["results"][0]["status"] == "completed"
            served += 1
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    assert junk_done[0] == 100
    assert served >= 1
    assert srv.proc is not None and srv.proc.poll() is None
    assert_kept(conn)
    # The junk connections are gone (closed by the server or by us): only ours is left.
    deadline = time.monotonic() + 5
    while True:
        conns = conn.call(MsgType.GET_STATS, {}).header["connections"]
        if conns == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert conns == 1


# -- a NACKed SUBMIT stored nothing ----------------------------------------------------------------------


def test_nacked_submits_store_nothing(srv: ServerProcess, conn: Connection) -> None:
    before = stats_totals(conn)
    unknown = uid()
    a, b = uid(), uid()
    bad_batches = [
        # BadRequest late in the batch
        ({"tasks": [_t(), _t(), _t(priority=999)]}, b"", "BadRequest"),
        # unknown dependency: NotFound for the whole batch
        ({"tasks": [_t(), _t(depends_on=[unknown])]}, b"", "NotFound"),
        # duplicate client id in a batch
        ({"tasks": [_t(id=a), _t(id=b), _t(id=a)]}, b"", "BadRequest"),
        # cycle inside the batch
        ({"tasks": [_t(id=a, depends_on=[b]), _t(id=b, depends_on=[a])]}, b"", "BadRequest"),
        # blob mismatch after valid tasks
        ({"tasks": [_t(payload_len=2), _t(payload_len=2)]}, b"abc", "BadRequest"),
        # TooLarge in the second task
        ({"tasks": [_t(payload_len=0), _t(payload_len=MAX_PAYLOAD + 1)]}, b"", "TooLarge"),
    ]
    for i, (header, blob, code) in enumerate(bad_batches):
        conn.send_raw(raw_frame(MsgType.SUBMIT, {"rid": 500 + i, **header}, blob))
        expect_nack(conn, code, 500 + i)
    assert_kept(conn)
    assert stats_totals(conn) == before
    # The client ids of the rejected batches were not taken.
    got = conn.call(MsgType.QUERY_STATUS, {"ids": [a, b]}).header["tasks"]
    assert got == [None, None]
