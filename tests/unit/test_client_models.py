"""The clients' pure parts: Job encoding, payload helpers, TaskInfo, and the request/answer
helpers of ``shardq.client.requests`` that Client and AsyncClient share. No sockets."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from shardq.client import requests as rq
from shardq.client.models import Job, TaskCancelled, TaskFailed, TaskInfo, WaitTimeout, to_bytes
from shardq.errors import BadRequest, InvalidState, NotFound, ProtocolError, QueueFull
from shardq.protocol.frames import (
    RESPONSE_TYPES,
    FrameDecoder,
    Message,
    MsgType,
    encode,
    encode_ack,
    encode_nack,
)

ROOT = Path(__file__).resolve().parents[2]


def decoded(frame: bytes) -> Message:
    """A frame as the clients' decoder hands it over."""
    dec = FrameDecoder(accept=RESPONSE_TYPES)
    dec.feed(frame)
    msg = dec.next()
    assert isinstance(msg, Message)
    return msg


def ack(body: dict[str, Any], blob: bytes = b"", rid: int = 7) -> Message:
    return decoded(encode_ack(rid, body, blob))


def wire_task(**over: Any) -> dict[str, Any]:
    task = {"id": str(uuid.uuid4()), "type": "email", "priority": 150, "status": "pending",
            "created_ms": 1, "updated_ms": 2, "scheduled_ms": 3, "max_retries": 3, "retry_count": 0,
            "timeout_seconds": 300, "worker_id": None, "lease_expires_ms": None, "attempt": 0,
            "depends_on": [], "error": None, "payload_len": 0, "result_len": None, "shard": 1}
    task.update(over)
    return task


def info(**over: Any) -> TaskInfo:
    return TaskInfo.from_wire(wire_task(**over))


# -- Job.encode ------------------------------------------------------------------------------


def test_job_defaults_get_a_fresh_canonical_client_id() -> None:
    spec, payload = Job("email").encode()
    assert payload == b""
    assert set(spec) == {"type", "payload_len", "id"}
    assert spec["type"] == "email" and spec["payload_len"] == 0
    assert str(uuid.UUID(spec["id"])) == spec["id"]
    assert Job("email").encode()[0]["id"] != spec["id"]


def test_job_keeps_a_given_id_and_every_option() -> None:
    tid, dep = str(uuid.uuid4()), str(uuid.uuid4())
    spec, payload = Job("email", {"to": "a@b"}, priority=200, depends_on=[dep], max_retries=0,
                        timeout=5, id=tid).encode()
    assert payload == orjson.dumps({"to": "a@b"})
    assert spec == {"type": "email", "payload_len": len(payload), "id": tid, "priority": 200,
                    "depends_on": [dep], "max_retries": 0, "timeout_seconds": 5}


def test_job_empty_depends_on_is_left_out() -> None:
    assert "depends_on" not in Job("email", depends_on=[]).encode()[0]


@pytest.mark.parametrize(("delay", "expected"), [(0, 0), (1.5, 1500), (0.0004, 0), (-3, 0)])
def test_job_delay_is_milliseconds_never_negative(delay: float, expected: int) -> None:
    spec, _ = Job("t", delay=delay).encode()
    assert spec["delay_ms"] == expected and "scheduled_ms" not in spec


def test_job_at_takes_a_datetime_or_epoch_seconds() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert Job("t", at=when).encode()[0]["scheduled_ms"] == int(when.timestamp() * 1000)
    assert Job("t", at=1_900_000_000.25).encode()[0]["scheduled_ms"] == 1_900_000_000_250
    assert Job("t", at=0).encode()[0]["scheduled_ms"] == 0
    assert "delay_ms" not in Job("t", at=5).encode()[0]


def test_job_delay_and_at_together_is_an_error() -> None:
    with pytest.raises(ValueError, match="delay or at"):
        Job("t", delay=1, at=time.time()).encode()


# -- to_bytes / TaskInfo ---------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (b"raw\x00", b"raw\x00"), (bytearray(b"ba"), b"ba"), (memoryview(b"mv"), b"mv"),
    ("héllo", "héllo".encode()), (None, b""), ({"a": [1, 2]}, b'{"a":[1,2]}'), ([1, "x"], b'[1,"x"]'),
    (3, b"3"), (True, b"true"),
])
def test_to_bytes(value: Any, expected: bytes) -> None:
    out = to_bytes(value)
    assert out == expected and type(out) is bytes


def test_taskinfo_from_wire_reads_every_field() -> None:
    tid, dep = str(uuid.uuid4()), str(uuid.uuid4())
    task = TaskInfo.from_wire(wire_task(id=tid, status="in_progress", worker_id="w1", attempt=2,
                                        lease_expires_ms=99, depends_on=[dep], payload_len=2,
                                        error="e", result_len=4), payload=b"{}", result=b"null")
    assert (task.id, task.type, task.priority, task.status) == (tid, "email", 150, "in_progress")
    assert (task.created_ms, task.updated_ms, task.scheduled_ms) == (1, 2, 3)
    assert (task.max_retries, task.retry_count, task.timeout_seconds, task.attempt) == (3, 0, 300, 2)
    assert (task.worker_id, task.lease_expires_ms, task.depends_on) == ("w1", 99, [dep])
    assert (task.error, task.payload_len, task.result_len, task.shard) == ("e", 2, 4, 1)
    assert (task.payload, task.result) == (b"{}", b"null")


def test_taskinfo_from_wire_tolerates_missing_optional_fields() -> None:
    obj = wire_task()
    for key in ("worker_id", "lease_expires_ms", "depends_on", "error", "payload_len", "result_len", "shard"):
        del obj[key]
    task = TaskInfo.from_wire(obj)
    assert task.depends_on == [] and task.payload_len == 0 and task.shard == 0
    assert task.payload is None and task.result is None


def test_taskinfo_json_helpers() -> None:
    task = info()
    assert task.json() is None and task.result_json() is None
    task.payload, task.result = orjson.dumps({"n": 1}), b"[1,2]"
    assert task.json() == {"n": 1} and task.result_json() == [1, 2]


def test_wait_errors_carry_the_task() -> None:
    task = info(status="dead_letter", error="boom")
    err = TaskFailed(task)
    assert err.task is task and "boom" in str(err)
    assert TaskCancelled(task).task is task


# -- shared request helpers ------------------------------------------------------------------


def test_retryable_is_exactly_the_repeatable_requests() -> None:
    assert rq.RETRYABLE == {MsgType.HELLO, MsgType.SUBMIT, MsgType.QUERY_STATUS, MsgType.LIST_TASKS,
                            MsgType.GET_STATS, MsgType.PING, MsgType.HEARTBEAT, MsgType.REGISTER_WORKER}
    assert not rq.RETRYABLE & {MsgType.CLAIM, MsgType.RESULT, MsgType.CANCEL, MsgType.REQUEUE,
                               MsgType.DEREGISTER_WORKER}


def test_backoff_doubles_up_to_the_cap() -> None:
    delays = [rq.BACKOFF_START]
    for _ in range(10):
        delays.append(rq.next_backoff(delays[-1]))
    assert delays[:3] == [0.05, 0.1, 0.2] and delays[-1] == rq.BACKOFF_MAX


def test_hello_header() -> None:
    assert rq.hello_header("me", None) == {"client": "me/0.1.0", "protocol": 1}
    assert rq.hello_header("me", "k")["api_key"] == "k"


def test_check_answer_returns_acks_and_raises_typed_nacks() -> None:
    msg = ack({"x": 1})
    assert rq.check_answer(msg) is msg
    assert rq.body(msg.header) == {"x": 1}
    with pytest.raises(QueueFull) as full:
        rq.check_answer(decoded(encode_nack(3, "QueueFull", "full", retry_after_ms=250)))
    assert full.value.retry_after_ms == 250
    for code, cls in (("NotFound", NotFound), ("InvalidState", InvalidState), ("BadRequest", BadRequest),
                      ("Protocol", ProtocolError)):
        with pytest.raises(cls, match="why"):
            rq.check_answer(decoded(encode_nack(3, code, "why")))
    assert ProtocolError.closes_connection and not NotFound.closes_connection


def test_submit_request_concatenates_payloads_in_order() -> None:
    jobs = [Job("a", b"xx"), Job("b", {"k": 1}), Job("c")]
    header, blob = rq.submit_request(jobs)
    assert [t["type"] for t in header["tasks"]] == ["a", "b", "c"]
    assert [t["payload_len"] for t in header["tasks"]] == [2, 7, 0]
    assert blob == b'xx{"k":1}'
    frame = decoded(encode(MsgType.ACK, {"rid": 1, "ids": [t["id"] for t in header["tasks"]]}))
    assert rq.parse_ids(frame) == [t["id"] for t in header["tasks"]]


def test_parse_status_results_none_and_empty() -> None:
    done, empty, running = (wire_task(status="completed", result_len=3),
                            wire_task(status="completed", result_len=0), wire_task(status="pending"))
    msg = ack({"tasks": [done, None, empty, running]}, b"abc")
    out = rq.parse_status(msg, with_result=True)
    assert out[1] is None
    assert [t.result for t in (out[0], out[2], out[3])] == [b"abc", b"", None]
    plain = rq.parse_status(ack({"tasks": [done, None]}), with_result=False)
    assert plain[0].result is None and plain[1] is None
    assert rq.status_header(iter(["i"]), True) == {"ids": ["i"], "with_result": True}


def test_parse_status_rejects_a_blob_of_the_wrong_size() -> None:
    with pytest.raises(BadRequest):
        rq.parse_status(ack({"tasks": [wire_task(result_len=3)]}, b"ab"), with_result=True)


def test_parse_claim_splits_payloads() -> None:
    a, b = wire_task(payload_len=2, attempt=1), wire_task(payload_len=0, attempt=1)
    tasks = rq.parse_claim(ack({"tasks": [a, b]}, b"hi"))
    assert [t.payload for t in tasks] == [b"hi", b""] and [t.id for t in tasks] == [a["id"], b["id"]]
    assert rq.parse_claim(ack({"tasks": []})) == []
    assert rq.claim_header("w", 5, 1.5, ["x"]) == {"worker_id": "w", "max": 5, "wait_ms": 1500, "types": ["x"]}
    assert "types" not in rq.claim_header("w", 1, 0, None)


def test_report_request_and_items() -> None:
    t1, t2, t3 = info(attempt=1), info(attempt=2), info(attempt=3)
    header, blob = rq.report_request("w", [rq.completed_item(t1, {"ok": True}), rq.failed_item(t2, "boom", False),
                                           rq.released_item(t3), rq.completed_item(t3, b"")])
    assert header["worker_id"] == "w"
    assert header["results"] == [
        {"id": t1.id, "attempt": 1, "status": "completed", "result_len": 11},
        {"id": t2.id, "attempt": 2, "status": "failed", "error": "boom", "retry": False},
        {"id": t3.id, "attempt": 3, "status": "released"},
        {"id": t3.id, "attempt": 3, "status": "completed", "result_len": 0}]
    assert blob == b'{"ok":true}'
    assert rq.parse_report(ack({"results": [{"id": t1.id, "status": "completed"}]})) == [
        {"id": t1.id, "status": "completed"}]


def test_heartbeat_register_requeue_headers() -> None:
    assert rq.heartbeat_header("w", None, {"cpu_percent": 1.5, "memory_rss": None}) == {
        "worker_id": "w", "cpu_percent": 1.5}
    assert rq.heartbeat_header("w", iter(["a"]), {})["active"] == ["a"]
    assert rq.parse_heartbeat(ack({"lease_expires_ms": 5})) == (5, [])
    assert rq.parse_heartbeat(ack({"lease_expires_ms": 5, "lost": ["a"]})) == (5, ["a"])
    assert rq.register_header("w", {"pid": 1}) == {"worker_id": "w", "pid": 1}
    assert rq.requeue_header(None, "dead_letter", None, None) == {"status": "dead_letter"}
    assert rq.requeue_header(("a",), "failed", "t", 3) == {"status": "failed", "ids": ["a"], "type": "t",
                                                           "limit": 3}
    assert rq.stats_header() == {} and rq.workers_header() == {"workers_detail": True}
    assert rq.parse_workers(ack({"workers": 0})) == []


def test_pager_follows_cursors_and_stops_at_the_limit() -> None:
    pager = rq.Pager("pending", "t", 10, 20, None, 2)
    assert pager.header == {"status": "pending", "limit": 2, "type": "t", "min_priority": 10, "max_priority": 20}
    page1 = [wire_task(), wire_task()]
    assert [t.id for t in pager.take(ack({"tasks": page1, "cursor": "c1"}))] == [t["id"] for t in page1]
    assert pager.header["cursor"] == "c1" and not pager.done
    assert len(pager.take(ack({"tasks": [wire_task()], "cursor": None}))) == 1 and pager.done

    limited = rq.Pager("pending", None, None, None, 3, 2)
    assert "type" not in limited.header
    assert len(limited.take(ack({"tasks": [wire_task(), wire_task()], "cursor": "c"}))) == 2
    assert len(limited.take(ack({"tasks": [wire_task(), wire_task()], "cursor": "d"}))) == 1
    assert limited.done
    assert rq.Pager("pending", None, None, None, 0, 2).done


def test_waiter_verdicts() -> None:
    waiter = rq.Waiter("tid", None, 0.05)
    with pytest.raises(NotFound):
        waiter.outcome(None)
    assert waiter.outcome(info(status="pending")) is None
    assert waiter.outcome(info(status="completed", result_len=2, result=None)) == b""
    done = info(status="completed")
    done.result = b"ok"
    assert waiter.outcome(done) == b"ok"
    with pytest.raises(TaskFailed) as failed:
        waiter.outcome(info(status="dead_letter", error="boom"))
    assert failed.value.task.error == "boom"
    with pytest.raises(TaskCancelled):
        waiter.outcome(info(status="cancelled"))


def test_waiter_backs_off_and_times_out() -> None:
    waiter = rq.Waiter("tid", None, 0.2)
    pauses = [waiter.pause() for _ in range(8)]
    assert pauses[0] == 0.01 and pauses == sorted(pauses) and pauses[-1] == 0.5
    short = rq.Waiter("tid", 0.05, 1.0)
    short.outcome(info(status="in_progress"))
    assert 0 < short.pause() <= 0.05
    time.sleep(0.06)
    with pytest.raises(WaitTimeout, match="still in_progress"):
        short.pause()


def test_shared_helpers_import_no_io() -> None:
    """Both clients build on them, so they stay pure like the protocol core."""
    code = ("import sys, shardq.client.requests; "
            "print(','.join(m for m in ('asyncio', 'socket', 'selectors', 'ssl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout.strip()
    assert out == ""
