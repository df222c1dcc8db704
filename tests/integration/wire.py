"""Small helpers for integration tests that speak the wire protocol to a real server.

Each helper sends one request over a blocking ``Connection`` and returns the
interesting part of the ACK; a NACK raises the matching ``shardq.errors`` class
(``Connection.call``). ``nack`` returns the raw error object of a NACK instead,
for tests that look at its fields.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from shardq.client.connection import Connection
from shardq.protocol.frames import Message, MsgType

T = TypeVar("T")

STATUSES = ("pending", "in_progress", "completed", "failed", "dead_letter", "cancelled")

# Every field of the protocol's task object and the JSON types it may take.
TASK_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,), "type": (str,), "priority": (int,), "status": (str,),
    "created_ms": (int,), "updated_ms": (int,), "scheduled_ms": (int,),
    "max_retries": (int,), "retry_count": (int,), "timeout_seconds": (int,),
    "worker_id": (str, type(None)), "lease_expires_ms": (int, type(None)),
    "attempt": (int,), "depends_on": (list,), "error": (str, type(None)),
    "payload_len": (int,), "result_len": (int, type(None)), "shard": (int,),
}


def now_ms() -> int:
    return int(time.time() * 1000)


def uid(prefix: str = "t") -> str:
    """A task type (or worker id) no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_id() -> str:
    return str(uuid.uuid4())


def is_canonical_id(value: Any) -> bool:
    return type(value) is str and len(value) == 36 and str(uuid.UUID(value)) == value


def id_in_shard(shard: int, shards: int) -> str:
    """A fresh client id whose owner (first 32 bits mod shards) is ``shard``."""
    while True:
        tid = new_id()
        if int(tid[:8], 16) % shards == shard:
            return tid


def spread_ids(n: int, shards: int) -> list[str]:
    """``n`` fresh client ids, cycling through the shards."""
    return [id_in_shard(i % shards, shards) for i in range(n)]


def check_task(task: Any) -> dict[str, Any]:
    """Assert ``task`` is a protocol task object with every field of the right type."""
    assert type(task) is dict, task
    missing = set(TASK_FIELDS) - set(task)
    assert not missing, f"task object lacks {sorted(missing)}: {task}"
    for name, types in TASK_FIELDS.items():
        value = task[name]
        # bool is an int in Python but not on the wire.
        assert type(value) in types, f"{name}={value!r} is {type(value).__name__}, want {types}"
    assert is_canonical_id(task["id"]), task["id"]
    assert task["status"] in STATUSES, task["status"]
    assert 0 <= task["priority"] <= 255
    assert all(is_canonical_id(d) for d in task["depends_on"]), task["depends_on"]
    return task


# -- requests ------------------------------------------------------------------------------


def hello(conn: Connection, client: str = "tests/1", **extra: Any) -> dict[str, Any]:
    return conn.call(MsgType.HELLO, {"client": client, "protocol": 1, **extra}).header


def ping(conn: Connection) -> Message:
    return conn.call(MsgType.PING, {})


def submit(conn: Connection, *tasks: dict[str, Any], payloads: Iterable[bytes] | None = None) -> list[str]:
    """SUBMIT ``tasks`` (payload_len filled in from ``payloads``, default empty); the ids."""
    pl = list(payloads) if payloads is not None else [b""] * len(tasks)
    assert len(pl) == len(tasks)
    specs = [{**t, "payload_len": len(p)} for t, p in zip(tasks, pl)]
    ids = conn.call(MsgType.SUBMIT, {"tasks": specs}, b"".join(pl)).header["ids"]
    assert len(ids) == len(tasks)
    return ids


def submit_one(conn: Connection, type: str, payload: bytes = b"", **fields: Any) -> str:
    return submit(conn, {"type": type, **fields}, payloads=[payload])[0]


def claim(conn: Connection, worker: str, max: int = 1, wait_ms: int = 0,
          types: list[str] | None = None) -> list[tuple[dict[str, Any], bytes]]:
    """CLAIM; a list of (task, payload)."""
    header: dict[str, Any] = {"worker_id": worker, "max": max, "wait_ms": wait_ms}
    if types is not None:
        header["types"] = types
    msg = conn.call(MsgType.CLAIM, header)
    return split_tasks(msg, "payload_len")


def split_tasks(msg: Message, len_field: str) -> list[tuple[dict[str, Any], bytes]]:
    """Pair each task of an answer with its section of the blob."""
    out = []
    pos = 0
    for task in msg.header["tasks"]:
        n = task[len_field] or 0
        out.append((task, msg.blob[pos:pos + n]))
        pos += n
    assert pos == len(msg.blob), f"blob is {len(msg.blob)} bytes, tasks announce {pos}"
    return out


def claim_until(conn: Connection, worker: str, types: list[str], count: int = 1,
                timeout: float = 5.0) -> list[tuple[dict[str, Any], bytes]]:
    """Claim until ``count`` tasks came back (waiting CLAIMs, not sleeps)."""
    got: list[tuple[dict[str, Any], bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(got)} of {count} tasks claimable after {timeout}s"
        got += claim(conn, worker, count - len(got), max(1, int(left * 1000)), types)
    return got


def result(conn: Connection, worker: str, *items: dict[str, Any],
           blobs: Iterable[bytes] | None = None) -> list[dict[str, Any]]:
    blob = b"".join(blobs) if blobs is not None else b""
    return conn.call(MsgType.RESULT, {"worker_id": worker, "results": list(items)}, blob).header["results"]


def complete(conn: Connection, worker: str, task: dict[str, Any], result_bytes: bytes = b"") -> dict[str, Any]:
    item = {"id": task["id"], "attempt": task["attempt"], "status": "completed",
            "result_len": len(result_bytes)}
    return result(conn, worker, item, blobs=[result_bytes])[0]


def fail(conn: Connection, worker: str, task: dict[str, Any], error: str = "boom",
         retry: bool | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": task["id"], "attempt": task["attempt"], "status": "failed",
                            "error": error}
    if retry is not None:
        item["retry"] = retry
    return result(conn, worker, item)[0]


def release(conn: Connection, worker: str, task: dict[str, Any]) -> dict[str, Any]:
    return result(conn, worker, {"id": task["id"], "attempt": task["attempt"], "status": "released"})[0]


def heartbeat(conn: Connection, worker: str, active: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"worker_id": worker, **extra}
    if active is not None:
        header["active"] = active
    return conn.call(MsgType.HEARTBEAT, header).header


def query(conn: Connection, ids: list[str]) -> list[dict[str, Any] | None]:
    return conn.call(MsgType.QUERY_STATUS, {"ids": ids}).header["tasks"]


def query_one(conn: Connection, tid: str) -> dict[str, Any]:
    task = query(conn, [tid])[0]
    assert task is not None, f"task {tid} is unknown"
    return task


def query_results(conn: Connection, ids: list[str]) -> list[tuple[dict[str, Any] | None, bytes | None]]:
    """QUERY_STATUS with_result: (task, result bytes or None) per id."""
    msg = conn.call(MsgType.QUERY_STATUS, {"ids": ids, "with_result": True})
    out: list[tuple[dict[str, Any] | None, bytes | None]] = []
    pos = 0
    for task in msg.header["tasks"]:
        if task is None or task["result_len"] is None:
            out.append((task, None))
            continue
        n = task["result_len"]
        out.append((task, msg.blob[pos:pos + n]))
        pos += n
    assert pos == len(msg.blob), f"blob is {len(msg.blob)} bytes, tasks announce {pos}"
    return out


def cancel(conn: Connection, tid: str) -> dict[str, Any]:
    return conn.call(MsgType.CANCEL, {"id": tid}).header


def requeue(conn: Connection, **fields: Any) -> dict[str, Any]:
    return conn.call(MsgType.REQUEUE, fields).header


def list_tasks(conn: Connection, status: str, **fields: Any) -> dict[str, Any]:
    return conn.call(MsgType.LIST_TASKS, {"status": status, **fields}).header


def walk(conn: Connection, status: str, **fields: Any) -> tuple[list[dict[str, Any]], int]:
    """Every task of a LIST_TASKS walk over the cursors; (tasks, pages)."""
    tasks: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        page = list_tasks(conn, status, **fields, **({"cursor": cursor} if cursor else {}))
        pages += 1
        assert pages < 10_000, "the cursor walk does not end"
        if "limit" in fields:
            assert len(page["tasks"]) <= fields["limit"]
        tasks += page["tasks"]
        cursor = page["cursor"]
        assert cursor is None or type(cursor) is str, cursor
        if cursor is None:
            return tasks, pages


def stats(conn: Connection) -> dict[str, Any]:
    return conn.call(MsgType.GET_STATS, {}).header


def total_tasks(conn: Connection) -> int:
    """How many tasks the broker holds, whatever their status (transitions keep it)."""
    totals = stats(conn)["totals"]
    return sum(totals[s] for s in STATUSES)


def register(conn: Connection, worker: str, **info: Any) -> dict[str, Any]:
    return conn.call(MsgType.REGISTER_WORKER, {"worker_id": worker, **info}).header


def deregister(conn: Connection, worker: str) -> dict[str, Any]:
    return conn.call(MsgType.DEREGISTER_WORKER, {"worker_id": worker}).header


def nack(conn: Connection, msg_type: int, header: dict[str, Any], blob: bytes = b"") -> dict[str, Any]:
    """Send a request that must be refused; the NACK's error object."""
    msg = conn.wait_for(conn.send(msg_type, header, blob))
    assert msg.type == MsgType.NACK, f"expected a NACK, got {msg.type.name} {msg.header}"
    return msg.header["error"]


def poll(fn: Callable[[], T | None], timeout: float = 5.0, interval: float = 0.02,
         what: str = "condition") -> T:
    """Call ``fn`` until it returns something truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")
        time.sleep(interval)


def poll_task(conn: Connection, tid: str, pred: Callable[[dict[str, Any]], bool],
              timeout: float = 5.0, what: str = "task state") -> dict[str, Any]:
    """QUERY_STATUS ``tid`` until ``pred(task)`` holds."""
    box: list[dict[str, Any]] = []

    def probe() -> dict[str, Any] | None:
        task = query_one(conn, tid)
        box[:] = [task]
        return task if pred(task) else None

    try:
        return poll(probe, timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; task: {box[0] if box else None}") from None
