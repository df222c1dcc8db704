"""The example frames of docs/protocol.md, made by the real codec.

    python docs/gen_protocol_examples.py            # print every block, between its markers
    python docs/gen_protocol_examples.py --write    # replace the blocks inside docs/protocol.md

Rule: every byte shown in docs/protocol.md comes from ``shardq.protocol.frames.encode``
(and every framing-error text from the real ``FrameDecoder``, the transition table
from ``shardq.engine.states``); no hex is typed by hand. tests/unit/test_protocol_doc.py re-runs ``blocks()`` and fails when a block in
the page differs by one byte, so the page cannot drift from the codec. Change an
example here, then run ``--write``.
"""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script from anywhere: import shardq from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shardq.engine import explain, states  # noqa: E402
from shardq.engine.schedules import Schedule, schedule_owner, tick_id  # noqa: E402
from shardq.engine.timing import Timing  # noqa: E402
from shardq.errors import ProtocolViolation  # noqa: E402
from shardq.protocol.frames import (  # noqa: E402
    MAX_FRAME,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    FrameDecoder,
    Malformed,
    MsgType,
    encode,
)
from shardq.schedule_specs import ScheduleSpec  # noqa: E402

DOC = Path(__file__).with_name("protocol.md")
BLOCK = re.compile(r"<!-- example:(?P<name>\S+) -->\n(?P<body>.*?)<!-- /example -->\n", re.S)

SHARDS = 2
NOW = 1763790000000  # 2025-11-22T05:40:00Z, in Unix epoch milliseconds
LEASE_MS = 30000

# Task ids: the owning shard is int(id[0:8], 16) % shards (see "Task ids" in the page).
A = "3f2a1c9e-5b7d-4e21-9a0c-6d8e4f1b2a37"  # 0x3f2a1c9e is even: shard 0 of 2
B = "7c41e0b2-9d3a-4f68-8b15-2e6a9c0d4f81"  # made by the server for a connection homed on shard 0
C = "a9d05e16-2c4b-4b7a-b3e2-81f05c6d7e90"
D = "5e8b2f47-c1a9-4d03-9f6e-0b7a3d2c1e58"  # odd: shard 1
UNKNOWN = "c0ffee00-1234-4abc-8def-0123456789ab"

PAYLOAD_A = b'{"to":"a@b.test"}'
PAYLOAD_B = b"{}"
RESULT_A = b'{"ok":true}'


SCHEDULE_PAYLOAD = b'{"format":"pdf"}'


def schedule(paused: bool = False, fired: int = 0) -> dict[str, Any]:
    """A schedule as the server shows it (engine/schedules.py ``to_wire``), made by the engine."""
    spec = ScheduleSpec(name="nightly-report", type="report", payload=SCHEDULE_PAYLOAD,
                        cron="30 2 * * *", timezone="Europe/Paris", misfire="once", paused=paused)
    s = Schedule(spec, Timing(spec.cron, None, spec.timezone), NOW)
    if fired:  # it fired its first tick, 2025-11-23T02:30 in Paris
        s.last_tick_ms = s.timing.next_after(NOW)
        s.last_fired_ms, s.fired = s.last_tick_ms + 2, fired
        s.last_task_id = tick_id(spec.name, s.last_tick_ms, SHARDS)
    s.due_ms = None if paused else s.timing.next_after(s.last_tick_ms)
    return s.to_wire(schedule_owner(spec.name, SHARDS))


def task(id: str, type: str, status: str, **changes: Any) -> dict[str, Any]:
    """A task object as the wire shows it (keys in the server's order)."""
    t: dict[str, Any] = {
        "id": id, "type": type, "priority": 100, "status": status, "created_ms": NOW,
        "updated_ms": NOW, "scheduled_ms": NOW, "max_retries": 3, "retry_count": 0,
        "timeout_seconds": 300, "worker_id": None, "lease_expires_ms": None, "attempt": 0,
        "depends_on": [], "error": None, "payload_len": 0, "result_len": None,
        "shard": int(id[0:8], 16) % SHARDS,
    }
    for key, value in changes.items():
        assert key in t, key
        t[key] = value
    return t


TASK_A_CLAIMED = task(A, "send_email", "in_progress", priority=150, updated_ms=NOW + 1200,
                      worker_id="w-1", lease_expires_ms=NOW + 1200 + LEASE_MS, attempt=1,
                      payload_len=len(PAYLOAD_A))
TASK_A_DONE = task(A, "send_email", "completed", priority=150, updated_ms=NOW + 2500, attempt=1,
                   payload_len=len(PAYLOAD_A), result_len=len(RESULT_A))
TASK_C_DEAD = task(C, "send_email", "dead_letter", priority=120, updated_ms=NOW + 9000,
                   max_retries=1, retry_count=1, attempt=2, error="SMTP timeout", payload_len=31)


# The history of TASK_C_DEAD: two attempts, each failed (engine/history.py).
HISTORY_C = {"events": [
    {"event": "submitted", "t_ms": NOW},
    {"event": "claimed", "t_ms": NOW + 1000, "attempt": 1, "worker_id": "w-1", "hostname": "box-7"},
    {"event": "failed", "t_ms": NOW + 1400, "attempt": 1, "error": "SMTP timeout"},
    {"event": "retry_scheduled", "t_ms": NOW + 1400, "due_ms": NOW + 2400},
    {"event": "claimed", "t_ms": NOW + 2500, "attempt": 2, "worker_id": "w-2", "hostname": "box-9"},
    {"event": "heartbeats", "t_ms": NOW + 4000, "last_ms": NOW + 8500, "count": 4},
    {"event": "failed", "t_ms": NOW + 9000, "attempt": 2, "error": "SMTP timeout"},
    {"event": "dead_lettered", "t_ms": NOW + 9000, "reason": "1 of 1 retries used"}],
    "dropped": 0, "dropped_after": None}


def _explained(facts: dict[str, Any], **more: Any) -> dict[str, Any]:
    """What EXPLAIN answers for these facts: the server's own checks (engine/explain.py)."""
    base = {"now_ms": NOW + 4000, "priority": 100, "created_ms": NOW, "updated_ms": NOW,
            "scheduled_ms": NOW, "started_ms": 0, "attempt": 0, "retry_count": 0, "max_retries": 3,
            "error": None, "result_len": None, "live_workers": [{"worker_id": "w-1", "types": None}]}
    return explain.explain({**base, **facts, **more})


# B (report) waits for A (send_email, shard 0), which runs on w-1.
EXPLAIN_B = _explained(
    {"id": B, "type": "report", "status": "pending", "shard": 0, "waiting_on": [A],
     "claims_last_minute": 0, "last_claim_ms": None},
    dependency=_explained({"id": A, "type": "send_email", "status": "in_progress", "shard": 0,
                           "started_ms": NOW + 1200, "attempt": 1, "worker_id": "w-1",
                           "lease_expires_ms": NOW + 3500 + LEASE_MS, "last_heartbeat_ms": NOW + 3500,
                           "heartbeats": 1}))


def _framing_error(data: bytes) -> str:
    """The text the real decoder gives for a framing error."""
    dec = FrameDecoder()
    dec.feed(data)
    try:
        dec.next()
    except ProtocolViolation as exc:
        return str(exc)
    raise AssertionError(f"{data!r} is not a framing error")


def _malformed(body: bytes) -> str:
    """The text the real decoder gives for a well-delimited frame with a bad body."""
    dec = FrameDecoder()
    dec.feed(struct.pack(">IB", 1 + len(body), MsgType.SUBMIT) + body)
    got = dec.next()
    assert type(got) is Malformed, got
    return got.error.message


def nack(rid: int | None, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"rid": rid, "error": {"code": code, "message": message, **extra}}


# (marker name, message type, header, blob). Order: the order of the page.
EXAMPLES: list[tuple[str, MsgType, dict[str, Any], bytes]] = [
    # -- HELLO
    ("HELLO:request", MsgType.HELLO,
     {"rid": 1, "client": "myapp/2.3", "protocol": PROTOCOL_VERSION, "api_key": "k-7f3e9a"}, b""),
    ("HELLO:ack", MsgType.ACK,
     {"rid": 1, "server": "shardq/0.1.0", "protocol": PROTOCOL_VERSION, "shard": 0, "shards": SHARDS,
      "max_frame": MAX_FRAME, "max_payload": MAX_PAYLOAD, "lease_ms": LEASE_MS,
      "heartbeat_ms": 15000}, b""),
    # -- SUBMIT: two tasks, the second depending on the first (by the client's id)
    ("SUBMIT:request", MsgType.SUBMIT,
     {"rid": 2, "tasks": [
         {"type": "send_email", "payload_len": len(PAYLOAD_A), "priority": 150, "id": A},
         {"type": "report", "payload_len": len(PAYLOAD_B), "delay_ms": 60000, "depends_on": [A]}]},
     PAYLOAD_A + PAYLOAD_B),
    ("SUBMIT:ack", MsgType.ACK, {"rid": 2, "ids": [A, B]}, b""),
    # -- CLAIM
    ("CLAIM:request", MsgType.CLAIM,
     {"rid": 3, "worker_id": "w-1", "max": 10, "wait_ms": 5000, "types": ["send_email"]}, b""),
    ("CLAIM:ack", MsgType.ACK, {"rid": 3, "tasks": [TASK_A_CLAIMED]}, PAYLOAD_A),
    ("CLAIM:ack-empty", MsgType.ACK, {"rid": 3, "tasks": []}, b""),
    # -- RESULT: one completed, one failed, one released
    ("RESULT:request", MsgType.RESULT,
     {"rid": 4, "worker_id": "w-1", "results": [
         {"id": A, "attempt": 1, "status": "completed", "result_len": len(RESULT_A)},
         {"id": C, "attempt": 2, "status": "failed", "error": "SMTP timeout", "retry": True},
         {"id": D, "attempt": 1, "status": "released"}]},
     RESULT_A),
    ("RESULT:ack", MsgType.ACK,
     {"rid": 4, "results": [
         {"id": A, "status": "completed"},
         {"id": C, "status": "dead_letter"},
         {"id": D, "error": {"code": "LeaseLost", "message":
                             f"w-1 does not hold attempt 1 of {D} (task is in_progress, attempt 2)"}}]},
     b""),
    # -- HEARTBEAT
    ("HEARTBEAT:request", MsgType.HEARTBEAT,
     {"rid": 5, "worker_id": "w-1", "cpu_percent": 37.5, "memory_rss": 104857600,
      "memory_percent": 1.2, "active": [A, D], "state": "running"}, b""),
    ("HEARTBEAT:ack", MsgType.ACK, {"rid": 5, "lease_expires_ms": NOW + 2000 + LEASE_MS, "lost": [D]},
     b""),
    # -- QUERY_STATUS
    ("QUERY_STATUS:request", MsgType.QUERY_STATUS,
     {"rid": 6, "ids": [A, UNKNOWN], "with_result": True}, b""),
    ("QUERY_STATUS:ack", MsgType.ACK, {"rid": 6, "tasks": [TASK_A_DONE, None]}, RESULT_A),
    # -- CANCEL
    ("CANCEL:request", MsgType.CANCEL, {"rid": 7, "id": B}, b""),
    ("CANCEL:ack", MsgType.ACK, {"rid": 7, "id": B, "status": "cancelled"}, b""),
    # -- LIST_TASKS
    ("LIST_TASKS:request", MsgType.LIST_TASKS,
     {"rid": 8, "status": "dead_letter", "type": "send_email", "min_priority": 100, "limit": 1},
     b""),
    ("LIST_TASKS:ack", MsgType.ACK,
     {"rid": 8, "tasks": [TASK_C_DEAD], "cursor": C.replace("-", "")}, b""),
    # -- GET_STATS
    ("GET_STATS:request", MsgType.GET_STATS, {"rid": 9}, b""),
    ("GET_STATS:ack", MsgType.ACK,
     {"rid": 9,
      "totals": {"pending": 120, "in_progress": 8, "completed": 5230, "failed": 3,
                 "dead_letter": 2, "cancelled": 1, "scheduled": 15,
                 "by_tier": {"low": 15, "normal": 100, "high": 5}},
      "workers": 4, "connections": 6,
      "shards": [
          {"shard": 0, "pending": 61, "in_progress": 4, "completed": 2610, "failed": 2,
           "dead_letter": 1, "cancelled": 0, "scheduled": 8,
           "by_tier": {"high": 3, "normal": 50, "low": 8}, "connections": 3, "rss": 73400320,
           "pid": 4242, "forwarded": 12, "cross_shard_claims": 0, "writable": True,
           "disk_free_bytes": 52613349376, "disk_alarm": False},
          {"shard": 1, "pending": 59, "in_progress": 4, "completed": 2620, "failed": 1,
           "dead_letter": 1, "cancelled": 1, "scheduled": 7,
           "by_tier": {"high": 2, "normal": 50, "low": 7}, "connections": 3, "rss": 73400320,
           "pid": 4243, "forwarded": 9, "cross_shard_claims": 2, "writable": True,
           "disk_free_bytes": 52613349376, "disk_alarm": False}],
      "uptime_s": 3600}, b""),
    # -- REGISTER_WORKER
    ("REGISTER_WORKER:request", MsgType.REGISTER_WORKER,
     {"rid": 10, "worker_id": "w-1", "hostname": "box-7", "pid": 4242,
      "types": ["send_email", "report"], "concurrency": 8}, b""),
    ("REGISTER_WORKER:ack", MsgType.ACK, {"rid": 10}, b""),
    # -- DEREGISTER_WORKER
    ("DEREGISTER_WORKER:request", MsgType.DEREGISTER_WORKER, {"rid": 11, "worker_id": "w-1"}, b""),
    ("DEREGISTER_WORKER:ack", MsgType.ACK, {"rid": 11, "released": 2}, b""),
    # -- REQUEUE: by ids, then in bulk
    ("REQUEUE:request", MsgType.REQUEUE, {"rid": 12, "ids": [C, A]}, b""),
    ("REQUEUE:ack", MsgType.ACK,
     {"rid": 12, "requeued": 1, "results": [
         {"id": C, "status": "pending"},
         {"id": A, "error": {"code": "InvalidState",
                             "message": "cannot requeue a task that is completed"}}]}, b""),
    ("REQUEUE:request-bulk", MsgType.REQUEUE,
     {"rid": 13, "status": "failed", "type": "send_email", "limit": 500}, b""),
    ("REQUEUE:ack-bulk", MsgType.ACK, {"rid": 13, "requeued": 37}, b""),
    # -- insight: DLQ_GROUPS, DELETE, BULK, SEARCH, TYPE_STATS
    ("DLQ_GROUPS:request", MsgType.DLQ_GROUPS, {"rid": 30, "type": "fetch"}, b""),
    ("DLQ_GROUPS:ack", MsgType.ACK,
     {"rid": 30, "groups": [{"group": "4dcd6a1db07cf762", "type": "fetch",
                             "error": "TimeoutError: timeout after <n> s on <ip>",
                             "example": "TimeoutError: timeout after 30.2 s on 10.0.0.7", "count": 42,
                             "first_ms": 1735689600000, "last_ms": 1735693199999, "sample": C}],
      "total": 42}, b""),
    ("DELETE:request", MsgType.DELETE, {"rid": 31, "ids": [C, A]}, b""),
    ("DELETE:ack", MsgType.ACK,
     {"rid": 31, "deleted": 1, "results": [
         {"id": C, "status": "deleted"},
         {"id": A, "error": {"code": "InvalidState", "message": (
             f"cannot delete a task that is pending: only completed, cancelled and dead_letter tasks "
             f"are deleted; cancel it first (shardq cancel {A})")}}]}, b""),
    ("BULK:request", MsgType.BULK,
     {"rid": 32, "action": "requeue", "status": "dead_letter", "group": "4dcd6a1db07cf762",
      "dry_run": True}, b""),
    ("BULK:ack", MsgType.ACK, {"rid": 32, "action": "requeue", "dry_run": True, "matched": 42}, b""),
    ("SEARCH:request", MsgType.SEARCH,
     {"rid": 33, "type": "send_email", "status": ["dead_letter"], "error": "smtp", "limit": 2}, b""),
    ("SEARCH:ack", MsgType.ACK,
     {"rid": 33, "tasks": [], "cursor": "1.t0:3f2a1c9e5b7d4e219a0c6d8e4f1b2a37", "scanned": 1000}, b""),
    ("TYPE_STATS:request", MsgType.TYPE_STATS, {"rid": 34}, b""),
    ("TYPE_STATS:ack", MsgType.ACK,
     {"rid": 34, "types": [{"type": "send_email", "pending": 120, "in_progress": 8, "failed": 2,
                            "dead_letter": 3, "completed_last_minute": 600, "oldest_pending_age_s": 4.2,
                            "throughput_per_s": 10.0,
                            "run_time_s": {"p50": 0.047, "p95": 0.191, "p99": 0.383, "count": 1180},
                            "queue_wait_s": {"p50": 0.011, "p95": 0.767, "p99": 1.535, "count": 1190}}],
      "window_s": [60, 120]}, b""),
    # -- PING
    ("PING:request", MsgType.PING, {"rid": 14}, b""),
    ("PING:ack", MsgType.ACK, {"rid": 14}, b""),
    # -- per-type controls (feature "type-controls")
    ("PAUSE_TYPE:request", MsgType.PAUSE_TYPE, {"rid": 20, "type": "send_email"}, b""),
    ("PAUSE_TYPE:ack", MsgType.ACK,
     {"rid": 20, "control": {"type": "send_email", "paused": True, "max_concurrency": None, "rate": None,
                             "burst": None, "version": 3, "updated_ms": NOW}}, b""),
    ("RESUME_TYPE:request", MsgType.RESUME_TYPE, {"rid": 21, "type": "send_email"}, b""),
    ("RESUME_TYPE:ack", MsgType.ACK,
     {"rid": 21, "control": {"type": "send_email", "paused": False, "max_concurrency": None, "rate": None,
                             "burst": None, "version": 4, "updated_ms": NOW}}, b""),
    ("SET_LIMITS:request", MsgType.SET_LIMITS,
     {"rid": 22, "type": "resize", "max_concurrency": 8, "rate": 50}, b""),
    ("SET_LIMITS:ack", MsgType.ACK,
     {"rid": 22, "control": {"type": "resize", "paused": False, "max_concurrency": 8, "rate": 50.0,
                             "burst": 5, "version": 1, "updated_ms": NOW}}, b""),
    ("GET_CONTROLS:request", MsgType.GET_CONTROLS, {"rid": 23, "type": "resize"}, b""),
    ("GET_CONTROLS:ack", MsgType.ACK,
     {"rid": 23, "controls": [{"type": "resize", "paused": False, "max_concurrency": 8, "rate": 50.0,
                               "burst": 5, "version": 1, "updated_ms": NOW, "running": 8, "ready": 130,
                               "shards": {"0": {"shard": 0, "type": "resize", "version": 1, "running": 5,
                                                "limit": 5, "rate_share": 0.5, "tokens": 0.4, "ready": 70,
                                                "blocked_by": "concurrency", "refused_cap": 12,
                                                "refused_rate": 0},
                                          "1": {"shard": 1, "type": "resize", "version": 1, "running": 3,
                                                "limit": 3, "rate_share": 0.5, "tokens": 1.7, "ready": 60,
                                                "blocked_by": "concurrency", "refused_cap": 4,
                                                "refused_rate": 1}}}]}, b""),
    # -- schedules (an extension: HELLO feature "schedules")
    ("SCHEDULE_ADD:request", MsgType.SCHEDULE_ADD,
     {"rid": 30, "name": "nightly-report", "type": "report", "payload_len": len(SCHEDULE_PAYLOAD),
      "cron": "30 2 * * *", "timezone": "Europe/Paris", "misfire": "once"}, SCHEDULE_PAYLOAD),
    ("SCHEDULE_ADD:ack", MsgType.ACK, {"rid": 30, "schedule": schedule()}, b""),
    ("SCHEDULE_LIST:request", MsgType.SCHEDULE_LIST, {"rid": 31}, b""),
    ("SCHEDULE_LIST:ack", MsgType.ACK, {"rid": 31, "schedules": [schedule(fired=1)]}, b""),
    ("SCHEDULE_LIST:request-one", MsgType.SCHEDULE_LIST, {"rid": 32, "name": "nightly-report"}, b""),
    ("SCHEDULE_LIST:ack-one", MsgType.ACK, {"rid": 32, "schedules": [schedule(fired=1)]},
     SCHEDULE_PAYLOAD),
    ("SCHEDULE_PAUSE:request", MsgType.SCHEDULE_PAUSE,
     {"rid": 33, "name": "nightly-report", "paused": True}, b""),
    ("SCHEDULE_PAUSE:ack", MsgType.ACK, {"rid": 33, "schedule": schedule(paused=True, fired=1)}, b""),
    ("SCHEDULE_REMOVE:request", MsgType.SCHEDULE_REMOVE, {"rid": 34, "name": "nightly-report"}, b""),
    ("SCHEDULE_REMOVE:ack", MsgType.ACK, {"rid": 34, "name": "nightly-report", "removed": True}, b""),
    # -- extension cancel_running: what the worker of a cancelled running task hears
    ("CANCEL:ack-running", MsgType.ACK, {"rid": 15, "id": A, "status": "cancelled"}, b""),
    ("HEARTBEAT:ack-cancelled", MsgType.ACK,
     {"rid": 16, "lease_expires_ms": NOW + 4000 + LEASE_MS, "lost": [A], "cancelled": [A]}, b""),
    ("RESULT:ack-cancelled", MsgType.ACK, {"rid": 17, "results": [{"id": A, "status": "cancelled"}]},
     b""),
    # -- extension worker_control
    ("WORKER_CONTROL:request", MsgType.WORKER_CONTROL,
     {"rid": 18, "worker_id": "w-1", "action": "quiet"}, b""),
    ("WORKER_CONTROL:ack", MsgType.ACK,
     {"rid": 18, "worker_id": "w-1", "command": "quiet", "state": "running"}, b""),
    ("HEARTBEAT:ack-command", MsgType.ACK,
     {"rid": 19, "lease_expires_ms": NOW + 6000 + LEASE_MS, "command": "quiet"}, b""),
    # -- extensions: "history" (QUERY_STATUS with_history) and "explain" (EXPLAIN)
    ("QUERY_STATUS:request-history", MsgType.QUERY_STATUS, {"rid": 15, "ids": [C], "with_history": True}, b""),
    ("QUERY_STATUS:ack-history", MsgType.ACK,
     {"rid": 15, "tasks": [{**TASK_C_DEAD, "history": HISTORY_C}]}, b""),
    ("EXPLAIN:request", MsgType.EXPLAIN, {"rid": 16, "id": B}, b""),
    ("EXPLAIN:ack", MsgType.ACK, {"rid": 16, **EXPLAIN_B}, b""),
    # -- one NACK per error code
    ("NACK:BadRequest", MsgType.NACK,
     nack(20, "BadRequest", "tasks[2].priority: must be an integer 0..255, got 300"), b""),
    ("NACK:BadRequest:rid", MsgType.NACK,
     nack(None, "BadRequest", "rid: must be an integer 0..2^63-1, got -1"), b""),
    ("NACK:BadRequest:malformed", MsgType.NACK,
     nack(None, "BadRequest", _malformed(struct.pack(">I", 3) + b"[1]")), b""),
    ("NACK:TooLarge", MsgType.NACK,
     nack(21, "TooLarge", "tasks[0].payload_len: 20000000 bytes is over the 10485760-byte "
                          "payload limit"), b""),
    ("NACK:QueueFull", MsgType.NACK,
     nack(22, "QueueFull", "queue depth 99990 + 50 would exceed the threshold 100000",
          retry_after_ms=2500), b""),
    ("NACK:NotFound", MsgType.NACK, nack(23, "NotFound", f"no task {UNKNOWN}"), b""),
    ("NACK:InvalidState", MsgType.NACK,
     nack(24, "InvalidState", "cannot cancel a task that is completed"), b""),
    ("NACK:LeaseLost", MsgType.NACK,
     nack(25, "LeaseLost", f"w-1 does not hold attempt 1 of {D} (task is in_progress, attempt 2)"),
     b""),
    ("NACK:Unauthorized", MsgType.NACK,
     nack(1, "Unauthorized", "api_key is missing or not valid"), b""),
    ("NACK:Forbidden", MsgType.NACK,
     nack(26, "Forbidden", "this API key lacks the 'admin' permission for cancel"), b""),
    ("NACK:Unavailable", MsgType.NACK, nack(None, "Unavailable", "too many connections"), b""),
    ("NACK:Internal", MsgType.NACK, nack(27, "Internal", "internal error; the server logged it"),
     b""),
    ("NACK:Protocol", MsgType.NACK,
     nack(None, "Protocol", _framing_error(struct.pack(">IB", 5, 0x0E))), b""),
    ("NACK:Protocol:version", MsgType.NACK,
     nack(1, "Protocol", "protocol version 2 is not supported (this server speaks 1)"), b""),
]

# -- task options (expiry, unique tasks, dependency results): the "Task options" section
PARENT_RESULT = b'{"rows":42}'
EXAMPLES += [
    ("taskopts:SUBMIT:request", MsgType.SUBMIT,
     {"rid": 40, "tasks": [
         {"type": "send_email", "payload_len": len(PAYLOAD_A), "ttl_ms": 600000},
         {"type": "nightly_report", "payload_len": len(PAYLOAD_B), "unique_key": "2025-11-22",
          "unique_window_ms": 3600000}]},
     PAYLOAD_A + PAYLOAD_B),
    ("taskopts:SUBMIT:ack", MsgType.ACK, {"rid": 40, "ids": [B, C], "duplicates": [1]}, b""),
    ("taskopts:SUBMIT:nack", MsgType.NACK,
     nack(41, "BadRequest", "tasks[0]: give expires_at_ms or ttl_ms, not both"), b""),
    ("taskopts:CLAIM:request", MsgType.CLAIM,
     {"rid": 42, "worker_id": "w-1", "max": 1, "types": ["report"], "dependency_results": True}, b""),
    ("taskopts:CLAIM:ack", MsgType.ACK,
     {"rid": 42, "tasks": [task(B, "report", "in_progress", attempt=1, worker_id="w-1",
                                lease_expires_ms=NOW + LEASE_MS, depends_on=[A, D],
                                payload_len=len(PAYLOAD_B), updated_ms=NOW + 1200)
                           | {"dependency_results": [{"id": A, "result_len": len(PARENT_RESULT)}],
                              "dependency_results_omitted": [D]}]},
     PAYLOAD_B + PARENT_RESULT),
]


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def hex_dump(frame: bytes, width: int = 16) -> str:
    """``length | type | header_len | header | blob``, ``width`` bytes a line."""
    (header_len,) = struct.unpack_from(">I", frame, 5)
    header, blob = frame[9:9 + header_len], frame[9 + header_len:]
    first = f"{_hex(frame[0:4])} | {_hex(frame[4:5])} | {_hex(frame[5:9])} | "
    pad = " " * len(first)
    lines = []
    for i in range(0, len(header), width):
        lines.append((first if i == 0 else pad) + _hex(header[i:i + width]))
    for i in range(0, len(blob), width):
        lines.append((pad[:-2] + "| " if i == 0 else pad) + _hex(blob[i:i + width]))
    return "\n".join(lines)


def render(msg_type: int, header: dict[str, Any], blob: bytes) -> str:
    frame = encode(msg_type, header, blob)
    head = frame[9:9 + struct.unpack_from(">I", frame, 5)[0]]
    parts = [f"{MsgType(msg_type).name} header: `{head.decode()}`", ""]
    if blob:
        parts += [f"blob: `{blob!r}`", ""]
    parts += ["```hex", hex_dump(frame), "```", ""]
    return "\n".join(parts)


def blocks() -> dict[str, str]:
    """Marker name -> the text between its markers."""
    out: dict[str, str] = {}
    for name, msg_type, header, blob in EXAMPLES:
        assert name not in out, name
        out[name] = render(msg_type, header, blob)
    # The transition table is drawn from the engine's own table (shardq/engine/states.py).
    out["lifecycle:transitions"] = states.diagram() + "\n"
    return out


def marked(name: str, text: str) -> str:
    return f"<!-- example:{name} -->\n{text}<!-- /example -->\n"


def write(doc: Path = DOC) -> list[str]:
    """Replace every block of ``doc`` by its generated text; returns the names not in the page."""
    generated = blocks()
    text = doc.read_text()
    seen = set()

    def sub(m: re.Match[str]) -> str:
        name = m["name"]
        seen.add(name)
        if name not in generated:
            raise SystemExit(f"{doc}: example {name!r} is not generated any more; remove it")
        return marked(name, generated[name])

    doc.write_text(BLOCK.sub(sub, text))
    return [n for n in generated if n not in seen]


def main(argv: list[str]) -> int:
    if argv[1:] == ["--write"]:
        missing = write()
        for name in missing:
            print(f"not in {DOC.name} yet (paste it):\n{marked(name, blocks()[name])}")
        return 1 if missing else 0
    if argv[1:]:
        print(__doc__)
        return 2
    for name, text in blocks().items():
        print(marked(name, text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
